"""The models shipped with ``docs/own-microscope.md`` are what the page says they are.

Each was trained by ``voxloc train`` for the calibrated PSF and the EMCCD in
``docs/own-microscope/``; these checks catch weights or settings that drift from the
documented files, and a model that no longer localizes on its own simulated frames.
"""

import json
from pathlib import Path

import pytest

from clients.cli import main
from engines.modeldir import read_info

DOCS = Path(__file__).resolve().parents[2] / "docs" / "own-microscope"

# model directory, PSF file it was trained with, floor for the molecule Jaccard on a
# small set (the full 500-frame figures are in docs/own-microscope.md Sec. 7)
SHIPPED = {
    "emccd150": ("psf.json", 0.85),  # 0.915 on 500 frames
    "emccd150-bright": ("psf-bright.json", 0.90),  # 0.940
    "emccd150-matched": ("psf-matched.json", 0.90),  # 0.949
}


@pytest.mark.parametrize("model", SHIPPED)
def test_settings_match_the_documented_calibration(model):
    info = read_info(DOCS / model)
    psf_file, _ = SHIPPED[model]
    psf = json.loads((DOCS / psf_file).read_text())["psf"]
    camera = json.loads((DOCS / "camera.json").read_text())
    got_psf = info.settings.psf.model_dump()
    for key, value in psf.items():
        assert got_psf[key] == pytest.approx(value), key
    noise = info.settings.noise
    assert noise.mode == "emccd"
    for key, value in camera.items():
        assert getattr(noise, key) == pytest.approx(value), key
    training = info.training
    assert training["steps_done"] == training["steps"] and training["seed"] == 1
    assert "voxloc train" in training["command"]


@pytest.mark.parametrize("model", SHIPPED)
def test_localizes_its_own_frames(model, tmp_path, capsys):
    _, floor = SHIPPED[model]
    out = tmp_path / "rep"
    rc = main(
        [
            "evaluate",
            "--model",
            str(DOCS / model),
            "--frames",
            "16",
            "--thresholds",
            "0.5",
            "--low-frames",
            "0",
            "--sweep-frames",
            "0",
            "--backend",
            "torch",
            "--precision",
            "fp32",
            "--seed",
            "5",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    capsys.readouterr()
    row = json.loads((out / "report.json").read_text())["results"][0]
    mol = row["molecule"]
    assert mol["tp"] + mol["fn"] == 16 * 50
    assert mol["jaccard"] > floor
    assert mol["rmse_lateral_nm"] < 40 and mol["rmse_axial_nm"] < 50
    assert row["voxel"]["jaccard"] > 0.6
