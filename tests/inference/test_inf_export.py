"""ONNX export: graph contract, freshness, where files land, BN folding, the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from inference_parity import HAS_TRT

from clients.cli import main
from engines.export import (
    DECODE_PREFIX,
    EXPORT_VERSION,
    ONNX_FILE,
    export_onnx,
    weights_sha256,
)
from engines.inference import create_engine
from engines.inference.fused import FusedVoxelNet
from engines.modeldir import SHIPPED_MODELS, load_model


def test_graph_contract(model_dir):
    path = export_onnx(model_dir)
    assert path == model_dir / ONNX_FILE
    model = onnx.load(str(path))
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in (*model.graph.input, *model.graph.output)
    }
    assert dims == {
        "frames": ["batch", 4, "height", "width"],
        "threshold": [1],
        "locs": ["n_locs", 5],
    }
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["weights_sha256"] == weights_sha256(model_dir)
    assert meta["voxloc_export_version"] == EXPORT_VERSION
    ops = {n.op_type for n in model.graph.node}
    assert {"NonZero", "GatherND", "Greater"} <= ops and "BatchNormalization" not in ops
    decode_ops = {n.op_type for n in model.graph.node if n.name.startswith(DECODE_PREFIX)}
    assert {"NonZero", "GatherND", "Add", "Mul"} <= decode_ops and "Conv" not in decode_ops


def test_fresh_export_is_not_redone_unless_forced(model_dir):
    path = export_onnx(model_dir)
    stamp = path.stat().st_mtime_ns
    assert export_onnx(model_dir) == path and path.stat().st_mtime_ns == stamp
    export_onnx(model_dir, force=True)
    assert path.stat().st_mtime_ns != stamp


def test_shipped_model_exports_into_the_cache(voxloc_cache):
    before = sorted(p.name for p in (SHIPPED_MODELS / "default").iterdir())
    engine = create_engine("default", "onnxruntime")
    assert engine.onnx_path.is_relative_to(voxloc_cache)
    assert sorted(p.name for p in (SHIPPED_MODELS / "default").iterdir()) == before


def test_folded_network_equals_training_network(shared_model_dir, frames):
    net, _ = load_model(shared_model_dir)
    with torch.no_grad():
        for m in net.modules():  # non-trivial BN statistics, so folding is really exercised
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        x = torch.from_numpy(frames)
        np.testing.assert_allclose(FusedVoxelNet(net)(x).numpy(), net(x).numpy(), atol=2e-5)


def test_cli_export(model_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "m.onnx"
    assert main(["export", str(model_dir), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    onnx.checker.check_model(onnx.load(str(out)))
    assert main(["export", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="checks the message where TensorRT is not installed")
def test_cli_build_engine_without_tensorrt(model_dir, capsys):
    assert main(["build-engine", str(model_dir)]) == 2
    assert "pip install voxloc[tensorrt]" in capsys.readouterr().err


def test_cli_build_engine_rejects_bad_profile(model_dir, capsys):
    assert main(["build-engine", str(model_dir), "--opt-batch", "64"]) == 2
    assert "1 <= min <= opt <= max, got 1/64/32" in capsys.readouterr().err
