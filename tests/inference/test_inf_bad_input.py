"""Bad frames, bad files and missing backends give clear errors, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_parity import CPU_BACKENDS, HAS_CUDA, HAS_ORT_CUDA

from engines.errors import EngineError, FormatError
from engines.export import export_onnx, read_onnx_metadata, weights_sha256
from engines.inference import create_engine
from engines.inference.base import BackendUnavailableError
from engines.modeldir import load_model, save_model


@pytest.fixture(scope="module", params=CPU_BACKENDS)
def engine(request, shared_model_dir):
    return create_engine(shared_model_dir, request.param)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((2, 3, 16, 16), np.float32, "expects 4 planes, got 3"),
        ((2, 5, 16, 16), np.uint16, "expects 4 planes, got 5"),
        ((0, 4, 16, 16), np.float32, "empty batch"),
        ((2, 4, 0, 16), np.uint16, "empty batch"),
        ((2, 4, 16, 0), np.float32, "empty batch"),
        ((16, 16), np.float32, "got shape (16, 16)"),
        ((1, 1, 4, 16, 16), np.float32, "got shape (1, 1, 4, 16, 16)"),
        ((1, 4, 16, 16), np.complex64, "got complex64"),
        ((1, 4, 16, 16), np.bool_, "got bool"),
    ],
)
def test_bad_frames(engine, shape, dtype, message):
    with pytest.raises(FormatError) as err:
        engine.infer(np.zeros(shape, dtype))
    assert message in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(engine, frames, bad):
    x = frames[:2].copy()
    x[1, 2, 5, 7] = bad
    with pytest.raises(FormatError, match="1 NaN/inf values"):
        engine.infer(x)
    assert len(engine.infer(frames[:2])) == 2  # the engine still works afterwards


@pytest.mark.parametrize("tau", [-0.1, 1.0, 2.0, float("nan")])
def test_bad_threshold(engine, frames, tau):
    with pytest.raises(ValueError, match="threshold must be in"):
        engine.infer(frames[:1], threshold=tau)


def test_corrupt_onnx_is_a_clear_error(model_dir):
    (model_dir / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(EngineError, match="corrupt or unreadable ONNX file .*model.onnx"):
        create_engine(model_dir, "onnxruntime")


def test_truncated_onnx_passed_directly(model_dir, tmp_path):
    good = export_onnx(model_dir)
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(EngineError, match="truncated.onnx"):
        create_engine(model_dir, "onnxruntime", onnx_path=bad)


def test_stale_onnx_is_exported_again(model_dir, frames):
    path = export_onnx(model_dir)
    before = create_engine(model_dir, "onnxruntime").infer(frames)
    net, info = load_model(model_dir)
    with torch.no_grad():
        net.head.bias[0::4] += 3.0  # far more confident: many more localizations
    save_model(net, info, model_dir)
    assert read_onnx_metadata(path)["weights_sha256"] != weights_sha256(model_dir)
    after = create_engine(model_dir, "onnxruntime").infer(frames)
    assert read_onnx_metadata(path)["weights_sha256"] == weights_sha256(model_dir)
    assert sum(map(len, after)) > sum(map(len, before))


def test_unknown_backend_and_device(shared_model_dir):
    with pytest.raises(EngineError, match="unknown backend 'tflite'"):
        create_engine(shared_model_dir, "tflite")
    with pytest.raises(EngineError, match="'tpu'"):
        create_engine(shared_model_dir, "onnxruntime", device="tpu")
    with pytest.raises(EngineError, match="precision"):
        create_engine(shared_model_dir, "torch", precision="int3")


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without a CUDA GPU")
def test_cuda_without_gpu_names_the_problem(shared_model_dir):
    with pytest.raises(BackendUnavailableError, match="sees no CUDA GPU"):
        create_engine(shared_model_dir, "torch", device="cuda")
    with pytest.raises(EngineError, match="fp16 needs a CUDA device"):
        create_engine(shared_model_dir, "torch", precision="fp16")
    with pytest.raises(EngineError, match="CUDA graphs need a CUDA device"):
        create_engine(shared_model_dir, "torch", cuda_graphs=True)


@pytest.mark.skipif(HAS_ORT_CUDA, reason="checks the message where onnxruntime has no CUDA EP")
def test_ort_cuda_without_provider_names_the_extra(shared_model_dir):
    with pytest.raises(BackendUnavailableError, match=r"pip install voxloc\[gpu\]"):
        create_engine(shared_model_dir, "onnxruntime", device="cuda")


def test_dtype_error_names_every_accepted_dtype(engine):
    with pytest.raises(FormatError) as err:
        engine.infer(np.zeros((1, 4, 16, 16), np.complex64))
    for name in ("uint16", "float32", "uint8", "int16", "int32", "float64"):
        assert name in str(err.value)
