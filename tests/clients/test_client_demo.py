"""Against a running ``voxloc demo``: the dashboard in a real headless Chromium, recording,
rendering and the control client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import polling
import pytest

from clients.cli import main
from clients.control import ControlClient, ControlError
from engines.io.loctable import read_table

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NONBLANK_JS = """() => {
  const img = document.getElementById('sr');
  if (!img.complete || !img.naturalWidth) return 0;
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) n++;
  return n;
}"""


def _voxloc(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The real ``voxloc`` entry point, in this process."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(180)
def test_dashboard_in_headless_chromium(demo, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/install.sh --test installs it)")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{demo.url}/", wait_until="load")
            assert page.title() == "voxloc live"

            # the super-resolution image gains non-blank pixels within seconds
            page.wait_for_function(f"({NONBLANK_JS})() > 20", timeout=30_000)

            # the stats update (polled from /stats) and show the four cameras
            first = int(page.evaluate("document.body.dataset.statsUpdates || 0"))
            page.wait_for_function(
                f"Number(document.body.dataset.statsUpdates || 0) >= {first + 2}", timeout=15_000
            )
            assert page.locator("#cameras tbody tr").count() == 4
            fps_in = page.locator("#fps_in").inner_text()
            assert fps_in != "–" and float(fps_in) > 0
            assert "default" in page.locator("#model").inner_text()

            # moving the threshold control changes GET /config
            before = httpx.get(f"{demo.url}/config").json()["threshold"]
            slider = page.locator("#threshold")
            slider.focus()
            for _ in range(5):
                page.keyboard.press("ArrowRight")
            expected = round(float(slider.input_value()), 2)
            assert expected != before
            polling.wait_for(
                lambda: (
                    httpx.get(f"{demo.url}/config").json()["threshold"] == pytest.approx(expected)
                ),
                "the threshold to reach the service",
                10,
                interval_s=0.1,
            )

            # the refine box follows GET /config and sets it
            box = page.locator("#refine")
            assert not box.is_checked()
            box.check()
            polling.wait_for(
                lambda: httpx.get(f"{demo.url}/config").json()["refine"] is True,
                "refine to reach the service",
                10,
                interval_s=0.1,
            )
            page.wait_for_function(
                "document.getElementById('ctlmsg').textContent.startsWith('refined')",
                timeout=10_000,
            )
            httpx.put(f"{demo.url}/config", json={"refine": False})
            page.wait_for_function("!document.getElementById('refine').checked", timeout=15_000)

            # let the image build up a little more for the screenshot
            page.wait_for_timeout(3000)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("VOXLOC_SCREENSHOT") == "1":  # refresh the one in the README
                shutil.copyfile(shot, REPO / "docs" / "dashboard.png")
            assert not errors, errors
        finally:
            browser.close()
    httpx.put(f"{demo.url}/config", json={"threshold": before})


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reset_clears_the_live_image(demo) -> None:
    before = httpx.get(f"{demo.url}/dashboard/info").json()
    assert before["state"] == "running"
    resp = httpx.post(f"{demo.url}/dashboard/reset")
    assert resp.status_code == 200 and resp.json()["reset"] is True
    png = httpx.get(f"{demo.url}/dashboard/image.png")
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_record_demo_stream_to_csv_and_picasso_hdf5(
    demo, tmp_path: Path, picasso_check, capsys: pytest.CaptureFixture
) -> None:
    csv, h5 = tmp_path / "demo.csv", tmp_path / "demo.h5"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "record",
            "-o",
            str(h5),
            "--endpoint",
            demo.locs_endpoint,
            "--frames",
            "30",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    code, out, err = _voxloc(
        capsys, "record", "-o", str(csv), "--endpoint", demo.locs_endpoint, "--frames", "30"
    )
    assert code == 0, err
    outputs = [out, proc.communicate(timeout=100)[0]]
    assert proc.returncode == 0, outputs[1]
    for text in outputs:
        assert "from 30 frame sets" in text and "0 messages missed" in text
    for path in (csv, h5):
        table = read_table(path)
        assert len(table) > 30  # ~30 molecules per frame at threshold 0.5
        assert (table.confidence >= 0.5 - 1e-6).all() and (table.confidence <= 1).all()
        # 30 frame sets in increasing order (a frame set the service drops is counted by
        # the service and simply absent here)
        assert np.all(np.diff(table.frame) >= 0) and len(set(table.frame.tolist())) <= 30
        x, y, z = table.xyz_nm.T
        assert (x > -500).all() and (x < 64 * 192 + 500).all()
        assert (z > -500).all() and (z < 1600 + 500).all()
    picasso_check(h5, frames_at_least=30)

    img = tmp_path / "demo.png"
    code, _, err = _voxloc(capsys, "render", str(h5), "-o", str(img), "--nm-per-px", "48")
    assert code == 0, err
    from PIL import Image

    arr = np.asarray(Image.open(img))
    assert arr.shape[0] == 256 and (arr[:, :256].sum(-1) > 0).sum() > 20  # 64 px * 192 / 48


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_control_client_against_the_service(demo, capsys: pytest.CaptureFixture) -> None:
    with ControlClient(demo.url) as ctl:
        assert ctl.ready()
        models = ctl.models()
        assert models["active"]["name"] == "default"
        assert "default" in [m["name"] for m in models["available"]]
        old = ctl.threshold()
        assert ctl.set_threshold(0.77)["threshold"] == pytest.approx(0.77)
        assert ctl.config()["threshold"] == pytest.approx(0.77)
        ctl.set_threshold(old)
        with pytest.raises(ControlError, match="threshold") as bad:
            ctl.set_threshold(1.5)
        assert bad.value.status == 422
        with pytest.raises(ControlError) as missing:
            ctl.load_model("no-such-model")
        assert missing.value.status == 404
        with pytest.raises(ValueError, match="unknown config keys"):
            ctl.set_config(thresh=0.3)
        reg = ctl.registration()["cameras"]
        assert set(reg) == {"cam0", "cam1", "cam2", "cam3"}
        assert reg["cam1"]["affine"] != [[1, 0, 0], [0, 1, 0]]  # set by the demo cameras
        stats = ctl.stats()
        assert stats["publisher"]["published"] > 0
        assert "voxloc_" in ctl.metrics()
    code, out, err = _voxloc(capsys, "ctl", "--url", demo.url, "status")
    assert code == 0 and "model default" in out, err
    code, _, err = _voxloc(capsys, "ctl", "--url", demo.url, "threshold", "1.5")
    assert code == 2 and "threshold" in err


def test_control_client_unreachable_service() -> None:
    from clients.commands.demo import free_port

    with ControlClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as ctl:
        with pytest.raises(ControlError, match="failed"):
            ctl.stats()
