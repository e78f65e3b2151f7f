"""``voxloc evaluate`` end to end with the shipped default model (small sets)."""

import json
import shutil

import pytest

from clients.cli import main
from engines.evaluate.runner import EvalConfig
from engines.modeldir import read_info, resolve_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--low-frames", "4", "--crlb-samples", "20", "--seed", "3"]


@pytest.mark.slow
def test_evaluate_writes_report_and_plots(tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--frames",
            "10",
            "--sweep-frames",
            "4",
            "--densities",
            "5",
            "60",
            "--backend",
            "torch",
            "-o",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "Table 4" in table and "CRLB" in table and "Density sweep" in table
    report = json.loads((out / "report.json").read_text())
    p = report["protocol"]
    assert (p["frames"], p["size"], p["molecules_per_frame"], p["margin_px"]) == (10, 64, 50, 0)
    assert [r["threshold"] for r in report["results"]] == [0.5, 0.9]
    for row in report["results"]:
        v, m = row["voxel"], row["molecule"]
        assert v["tp"] + v["fp"] + v["fn"] + v["tn"] == 10 * 4 * 64 * 64
        assert v["tp"] + v["fn"] <= 10 * 50  # two molecules may share a voxel
        assert m["tp"] + m["fn"] == 10 * 50
        assert set(m) >= {
            "rmse_lateral_nm",
            "rmse_axial_nm",
            "bias_z_nm",
            "efficiency_lateral",
            "efficiency_axial",
        }
    tau05 = report["results"][0]
    # loose: the shipped model may be a mid-training checkpoint
    assert tau05["molecule"]["jaccard"] > 0.5
    assert tau05["voxel"]["jaccard"] > 0.4
    assert tau05["molecule"]["rmse_lateral_nm"] < 80 and tau05["molecule"]["rmse_axial_nm"] < 120
    assert report["results"][1]["molecule"]["fp"] <= tau05["molecule"]["fp"]
    low = report["low_density"]
    assert low["drift"] is False and low["molecules_per_frame"] == 10
    assert 0 < low["crlb"]["lateral_nm"] < low["results"][0]["molecule"]["rmse_lateral_nm"]
    sweep = report["density_sweep"]
    assert [pt["molecules_per_frame"] for pt in sweep] == [5, 60]
    assert set(report["plots"]) == {"jaccard_vs_density", "error_histograms"}
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_record_stores_metrics_in_model_json(tmp_path, capsys):
    model = tmp_path / "copy"
    shutil.copytree(resolve_model("default"), model)
    rc = main(
        [
            "evaluate",
            "--model",
            str(model),
            "--frames",
            "3",
            "--size",
            "32",
            "--sweep-frames",
            "0",
            "--thresholds",
            "0.5",
            "--record",
            "-o",
            str(tmp_path / "rep"),
            *SMALL,
        ]
    )
    assert rc == 0
    assert "metrics recorded" in capsys.readouterr().out
    metrics = read_info(model).metrics["evaluate_32x32"]
    assert metrics["frames"] == 3 and metrics["molecules_per_frame"] == 12  # 50 * 32^2 / 64^2
    assert 0 <= metrics["tau_0.5"]["molecule_jaccard"] <= 1
    assert metrics["low_density"]["crlb_lateral_nm"] > 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["plots"] == {} and report["density_sweep"] == []


def test_unknown_model_exits_2_without_output(tmp_path, capsys):
    out = tmp_path / "never"
    rc = main(["evaluate", "--model", "no-such-model", "--frames", "2", "-o", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "voxloc evaluate: error:" in err and "no-such-model" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--frames", "0"], "--frames"),
        (["--thresholds", "0.5", "1.5"], "1.5"),
        (["--size", "8"], "--size"),
        (["--molecules", "-3"], "--molecules"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(args, named, tmp_path, capsys):
    assert main(["evaluate", *args, "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1


def test_density_scales_with_frame_size():
    assert EvalConfig(size=256).per_frame(50) == 800
    assert EvalConfig(size=256).batch == 3
    assert EvalConfig().per_frame(10) == 10
