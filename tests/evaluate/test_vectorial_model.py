"""The model shipped in ``docs/own-microscope/vectorial`` (issue 12) is what its README says:
trained on the spline it carries, and it localizes frames drawn from that spline."""

import json
from pathlib import Path

from clients.cli import main
from engines.modeldir import read_info
from engines.spline_psf import file_sha256

MODEL = Path(__file__).resolve().parents[2] / "docs" / "own-microscope" / "vectorial" / "model"


def test_carries_the_spline_it_was_trained_on():
    raw = json.loads((MODEL / "model.json").read_text())
    ref = raw["settings"]["psf"]["spline"]
    assert ref["path"] == "psf_spline.npz"
    assert file_sha256(MODEL / "psf_spline.npz") == ref["sha256"]
    info = read_info(MODEL)
    assert Path(info.settings.psf.spline.path).is_absolute()
    assert info.training["steps_done"] == info.training["steps"] == 1300
    assert info.training["init_from"] == "default"


def test_localizes_its_own_spline_frames(tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["evaluate", "--model", str(MODEL), "--frames", "16", "--thresholds", "0.5"]
    args += ["--low-frames", "0", "--sweep-frames", "0", "--backend", "torch"]
    args += ["--precision", "fp32", "--seed", "5", "-o", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    row = json.loads((out / "report.json").read_text())["results"][0]
    mol = row["molecule"]
    assert mol["tp"] + mol["fn"] == 16 * 50
    assert mol["jaccard"] > 0.9  # 0.945 on 500 vectorial frames
    assert mol["rmse_lateral_nm"] < 30 and mol["rmse_axial_nm"] < 40
    assert abs(row["z_by_depth"]["bias_z_nm"]) < 25
