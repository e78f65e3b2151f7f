"""``voxloc evaluate --calibrate-precision``: fit, check, record, and the engine uses it."""

import json
import shutil

import numpy as np
import pytest

from clients.cli import main
from engines.inference import create_engine
from engines.modeldir import read_info, resolve_model
from engines.simulator import Simulator


def default_copy(tmp_path, *, calibrated: bool = True):
    """A copy of the default model directory (``calibrated=False``: without its precision
    record)."""
    model = tmp_path / "copy"
    shutil.copytree(resolve_model("default"), model, ignore=shutil.ignore_patterns("*.onnx"))
    if not calibrated:
        doc = json.loads((model / "model.json").read_text())
        doc.pop("precision", None)
        (model / "model.json").write_text(json.dumps(doc))
    return model


@pytest.mark.slow
def test_calibration_is_recorded_and_loaded_with_the_model(tmp_path, capsys):
    model = default_copy(tmp_path, calibrated=False)
    with create_engine(model, "onnxruntime") as eng:
        frames = Simulator(eng.info.settings, seed=5).sample(2, 20, height=32, width=32)
        before = eng.infer(frames.frames.numpy())
    assert np.isnan(np.concatenate([loc.precision_nm for loc in before])).all()

    args = ["evaluate", "--calibrate-precision", "--model", str(model), "--frames", "40"]
    rc = main([*args, "--size", "32", "--backend", "onnxruntime", "--seed", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "k = " in out and "within sigma" in out and "recorded" in out
    record = json.loads((model / "model.json").read_text())["precision"]
    assert record["command"].startswith("voxloc evaluate --calibrate-precision")
    assert set(record["figures"]) == {"low_density", "main_density", "low_density_no_drift"}
    assert all(k > 0 for k in record["k"]) and record["window_px"] == 9
    assert record["step_weight"][:2] == [0.0, 0.0] and record["step_weight"][2] >= 0.0
    # one lateral fit through x and y: their constants are the same
    assert record["fit_set"]["lateral"] == "x and y pooled"
    for key in ("k", "floor_nm", "crowding_nm", "chi2_weight_nm"):
        assert record[key][0] == record[key][1]
    assert "step weight = " in out and "Gauss-Newton" in record["method"]
    assert read_info(model).precision is not None
    assert read_info(model).settings == read_info(resolve_model("default")).settings

    with create_engine(model, "onnxruntime") as eng:
        after = eng.infer(frames.frames.numpy())
    prec = np.concatenate([loc.precision_nm for loc in after])
    assert np.isfinite(prec).all() and (prec > 0).all()


@pytest.mark.slow
def test_refined_positions_get_their_own_calibration(tmp_path, capsys):
    """``--refine``: the constants of refined positions go to ``precision.refined``, the
    network's stay, and the engine reports the refined ones only while it refines."""
    model = default_copy(tmp_path)
    base = json.loads((model / "model.json").read_text())["precision"]
    args = ["evaluate", "--calibrate-precision", "--refine", "--model", str(model)]
    rc = main([*args, "--frames", "40", "--size", "32", "--backend", "onnxruntime"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "of refined (voxloc localize --refine) positions" in out
    record = json.loads((model / "model.json").read_text())["precision"]
    assert record["k"] == base["k"] and record["command"] == base["command"]
    refined = record["refined"]
    assert refined["command"].endswith("--refine")
    assert set(refined["figures"]) == {"low_density", "main_density", "low_density_no_drift"}
    # refined positions sit near the bound: a smaller multiplier than the network's
    assert refined["k"][0] < base["k"][0]

    frames = Simulator(read_info(model).settings, seed=5).sample(2, 20, height=32, width=32)
    with create_engine(model, "onnxruntime") as eng:
        plain = np.concatenate([loc.precision_nm for loc in eng.infer(frames.frames.numpy())])
        eng.refine = True
        refined_prec = eng.infer(frames.frames.numpy())
    sigma = np.concatenate([loc.precision_nm for loc in refined_prec])
    assert np.isfinite(sigma).all() and (sigma > 0).all()
    assert np.median(sigma[:, 0]) < 0.8 * np.median(plain[:, 0])

    # recalibrating the network keeps the refined record
    again = ["evaluate", "--calibrate-precision", "--model", str(model), "--frames", "20"]
    assert main([*again, "--size", "32", "--backend", "onnxruntime"]) == 0
    assert json.loads((model / "model.json").read_text())["precision"]["refined"] == refined


def test_refined_calibration_needs_the_networks_first(tmp_path, capsys):
    model = default_copy(tmp_path, calibrated=False)
    args = ["evaluate", "--calibrate-precision", "--refine", "--model", str(model)]
    rc = main([*args, "--frames", "10", "--size", "32", "--backend", "onnxruntime"])
    assert rc != 0
    assert "calibrate the network's precision first" in capsys.readouterr().err
    assert "precision" not in json.loads((model / "model.json").read_text())


def test_refining_without_a_refined_calibration_says_so_once(tmp_path, caplog):
    model = default_copy(tmp_path)
    doc = json.loads((model / "model.json").read_text())
    doc["precision"].pop("refined", None)
    (model / "model.json").write_text(json.dumps(doc))
    frames = Simulator(read_info(model).settings, seed=5).sample(2, 20, height=32, width=32)
    with create_engine(model, "onnxruntime") as eng:
        eng.infer(frames.frames.numpy())
        assert "no precision calibration of refined positions" not in caplog.text
        eng.refine = True
        eng.infer(frames.frames.numpy())
        eng.infer(frames.frames.numpy())
    assert caplog.text.count("no precision calibration of refined positions") == 1
