"""``voxloc calibrate`` end to end through the real entry point, on real TIFF files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from clients.cli import main


@pytest.mark.slow
def test_simulate_register_and_fit_psf(tmp_path, capsys):
    beads = tmp_path / "beads"
    assert (
        main(
            ["calibrate", "simulate-beads", "-o", str(beads), "--beads", "50", "--z-step-nm", "100"]
        )
        == 0
    )
    reg = tmp_path / "registration.json"
    cams = sorted(str(p) for p in beads.glob("beads_cam*.tif"))
    assert main(["calibrate", "registration", *cams, "-o", str(reg)]) == 0
    truth = np.array(json.loads((beads / "truth.json").read_text())["affines"])
    body = json.loads(reg.read_text())
    assert set(body["cameras"]) == {"cam0", "cam1", "cam2", "cam3"}
    np.testing.assert_allclose(body["cameras"]["cam2"]["affine"], truth[2], atol=0.05)
    psf = tmp_path / "psf.json"
    stacks = sorted(str(p) for p in beads.glob("zstack_plane*.tif"))
    assert (
        main(
            ["calibrate", "psf", *stacks, "--z-step-nm", "100", "-o", str(psf), "--min-beads", "2"]
        )
        == 0
    )
    fitted = json.loads(psf.read_text())["psf"]
    assert abs(fitted["r0_nm"] - 133.0) < 5.0
    assert psf.with_suffix(".png").stat().st_size > 1000
    assert "residual rms" in capsys.readouterr().out


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(4):
        paths.append(tmp_path / f"noise{k}.tif")
        tifffile.imwrite(paths[-1], (100 + 3 * rng.standard_normal((2, 48, 48))).astype("f4"))
    out = str(tmp_path / "r.json")
    assert main(["calibrate", "registration", *map(str, paths), "-o", out]) == 2
    assert "camera 'cam0': found 0 bead(s)" in capsys.readouterr().err
    assert main(["calibrate", "registration", *map(str, paths[:3]), "-o", out]) == 2
    assert "expected 4 bead image files" in capsys.readouterr().err
    assert main(["calibrate", "psf", *map(str, paths), "--z-step-nm", "50", "-o", out]) == 2
    assert "expected every z-stack as (Z, H, W) with the same Z >= 5" in capsys.readouterr().err
    (tmp_path / "bad.tif").write_text("not a tiff")
    assert main(["calibrate", "registration", str(tmp_path / "bad.tif"), "-o", out]) == 2
    assert "cannot read bead image" in capsys.readouterr().err
