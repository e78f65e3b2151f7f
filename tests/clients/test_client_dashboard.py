"""The dashboard router under a real uvicorn server, fed by a real XPUB socket."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import polling
import pytest
import uvicorn
import zmq
from fastapi import FastAPI
from PIL import Image

from clients.commands.demo import free_port
from clients.dashboard import create_router
from clients.dashboard.live import PhotonHistogram
from engines.types import Localizations
from service.wire import LocsMessage, encode_locs
from tests.clients.test_client_demo import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture
def served(ctx: zmq.Context) -> Iterator[tuple[str, zmq.Socket, object]]:
    """uvicorn serving only the dashboard router; an XPUB socket as the service's stream."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    router = create_router(endpoint.replace("127.0.0.1", "*"), interval_s=0.2)
    app = FastAPI()
    app.include_router(router)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    polling.wait_for(lambda: server.started, "uvicorn to start", 20, interval_s=0.05)
    assert pub.poll(10_000), "the dashboard never subscribed"
    pub.recv()
    yield f"http://127.0.0.1:{port}", pub, router.live  # type: ignore[attr-defined]
    server.should_exit = True
    thread.join(10)


def _message(seq: int, n: int, locs: Localizations | None = None) -> list:
    xyz = np.column_stack(
        [np.full(n, 1000.0 + seq % 100), np.full(n, 2000.0), np.full(n, 1200.0)]
    ).astype(np.float32)
    if locs is None:
        locs = Localizations(seq, xyz, np.ones(n, np.float32))
    return encode_locs(
        LocsMessage(
            "voxloc",
            seq,
            seq,
            "default",
            "1",
            0.5,
            0,
            0,
            0,
            locs,
        )
    )


def _photometry_message(seq: int, photons: float, sigma_nm: float, x_nm: float) -> list:
    """Ten localizations at (x_nm, 3000 nm) with these photons and lateral precision."""
    n = 10
    xyz = np.tile(np.float32([x_nm, 3000.0, 800.0]), (n, 1))
    precision = np.tile(np.float32([sigma_nm, sigma_nm, 50.0]), (n, 1))
    locs = Localizations(
        seq,
        xyz,
        np.ones(n, np.float32),
        np.full(n, photons, np.float32),
        np.full(n, 10.0, np.float32),
        precision,
    )
    return _message(seq, n, locs)


def _lit_columns(img: np.ndarray, lo_nm: float, hi_nm: float) -> int:
    return int((img[:, int(lo_nm / 24) : int(hi_nm / 24)].sum(-1) > 0).sum())


def test_photon_histogram_bins_counts_unknown_and_median() -> None:
    hist = PhotonHistogram((1.0, 4.0), bins=3)  # 10-100-1000-10000 photons
    hist.add(np.array([50.0, 500.0, 600.0, 5e5, np.nan, -3.0]))
    s = hist.summary()
    assert s["counts"] == [1, 2, 1] and (s["known"], s["unknown"]) == (4, 2)
    assert s["median"] == pytest.approx(np.sqrt(100 * 1000))  # in the 100-1000 bin
    hist.reset()
    assert hist.summary()["known"] == 0 and hist.median() is None


@pytest.mark.timeout(60)
def test_precision_mode_blurs_by_each_precision_and_the_mode_can_switch(served) -> None:
    url, pub, live = served
    assert httpx.get(f"{url}/dashboard/info").json()["mode"] == "precision"  # default
    for seq in range(20):  # precise ones at x = 2000 nm, uncertain ones at x = 8000 nm
        pub.send_multipart(_photometry_message(2 * seq, 800.0, 5.0, 2000.0))
        pub.send_multipart(_photometry_message(2 * seq + 1, 3000.0, 60.0, 8000.0))
    polling.wait_for(
        lambda: live.snapshot.info.get("localizations") == 400, "400 rendered", 30, 0.05
    )
    photons = live.snapshot.info["photons"]
    assert photons["known"] == 400 and photons["unknown"] == 0
    img = np.asarray(Image.open(io.BytesIO(httpx.get(f"{url}/dashboard/image.png").content)))
    sharp, wide = _lit_columns(img, 1500, 2500), _lit_columns(img, 7000, 9000)
    assert 0 < sharp < wide  # each blurred by its own precision
    version = live.snapshot.version
    assert httpx.put(f"{url}/dashboard/render", json={"mode": "hist"}).json() == {"mode": "hist"}
    assert live.snapshot.version > version and live.snapshot.info["mode"] == "hist"
    img = np.asarray(Image.open(io.BytesIO(httpx.get(f"{url}/dashboard/image.png").content)))
    assert _lit_columns(img, 1500, 2500) == _lit_columns(img, 7000, 9000) == 1  # one pixel each
    bad = httpx.put(f"{url}/dashboard/render", json={"mode": "dots"})
    assert bad.status_code == 422


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_page_shows_the_photon_histogram_and_switches_rendering(served) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/install.sh --test installs it)")
    url, pub, live = served
    for seq in range(30):
        photons = 400.0 if seq % 3 else 4000.0  # 200 of 300 at 400 photons
        pub.send_multipart(_photometry_message(seq, photons, 20.0, 1000.0 + 100 * seq))
    polling.wait_for(
        lambda: live.snapshot.info.get("localizations") == 300, "300 rendered", 30, 0.05
    )
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/", wait_until="load")
            page.wait_for_function(
                "document.getElementById('photons').dataset.known === '300'", timeout=20_000
            )
            bars = page.eval_on_selector_all(
                "#photons rect", "els => els.map(e => Number(e.dataset.count))"
            )
            assert len(bars) == 50 and sum(bars) == 300 and sorted(bars)[-2:] == [100, 200]
            summary = page.locator("#photon_summary").inner_text()
            assert "over 300 localizations" in summary
            median = float(summary.split("≈ ")[1].split(" ")[0])
            assert 400 / 1.3 < median < 400 * 1.3  # within a log bin of 400
            assert page.locator("#render_mode").input_value() == "precision"
            page.select_option("#render_mode", "gauss")
            polling.wait_for(lambda: live.settings.mode == "gauss", "mode switched", 10, 0.05)
            page.wait_for_function(
                "document.getElementById('ctlmsg').textContent === 'rendering: gauss'",
                timeout=10_000,
            )
            assert not errors, errors
        finally:
            browser.close()


@pytest.mark.timeout(60)
def test_bins_a_fast_stream_and_sends_few_rendered_updates(served) -> None:
    url, pub, live = served
    first_version = live.snapshot.version
    for seq in range(3000):  # far faster than any camera: the dashboard must not fall behind
        pub.send_multipart(_message(seq, 5))
    polling.wait_for(
        lambda: live.frames >= 3000 and live.snapshot.info.get("frames") == 3000,
        "3000 frame sets binned and rendered",
        30,
        interval_s=0.05,
    )
    assert live.missed == 0 and live.hist.total == 15_000
    renders = live.snapshot.version - first_version
    assert 1 <= renders < 300  # rendered images at a bounded rate, never one per message
    png = httpx.get(f"{url}/dashboard/image.png")
    img = np.asarray(Image.open(io.BytesIO(png.content)))
    row, col = int(2000 / 24), int(1050 / 24)
    assert img[row, col].sum() > 0  # the localizations are where they should be
    info = httpx.get(f"{url}/dashboard/info").json()
    assert info["nm_per_px"] == 24.0 and len(info["colorbar"]) == 11
    assert info["endpoint"].startswith("tcp://*:")


@pytest.mark.timeout(60)
def test_event_stream_pushes_rendered_images(served) -> None:
    url, pub, _live = served
    pub.send_multipart(_message(0, 50))
    with httpx.stream("GET", f"{url}/dashboard/events", timeout=20) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        event, data = None, None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "image":
                data = json.loads(line[6:])
                if data["localizations"] >= 50:
                    break
    assert data is not None and data["frames"] == 1 and data["model"] == "default"
    img = Image.open(io.BytesIO(base64.b64decode(data["png"])))
    assert img.size == (data["width"], data["height"]) == (512, 512)


def test_page_and_assets_are_served_locally(served) -> None:
    url, _pub, _live = served
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "voxloc live" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from a CDN
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        resp = httpx.get(f"{url}/dashboard/static/{name}")
        assert resp.status_code == 200 and ctype in resp.headers["content-type"]
    assert httpx.get(f"{url}/dashboard/static/secret.txt").status_code == 404
    assert httpx.post(f"{url}/dashboard/reset").json()["reset"] is True
