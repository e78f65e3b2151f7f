"""``auto``: the choice order, its log line, and falling through a backend that fails."""

from __future__ import annotations

import logging

import pytest
from inference_parity import HAS_CUDA

import engines.inference.auto as auto
from engines.inference import create_engine
from engines.inference.onnx_backend import OnnxEngine


def test_cpu_is_onnxruntime():
    assert auto.candidates("cpu") == [("onnxruntime", "cpu", "CPU asked for")]


def test_order_ends_with_onnxruntime_cpu():
    names = [(b, d.split(":")[0]) for b, d, _ in auto.candidates()]
    assert names[-1] == ("onnxruntime", "cpu")
    order = [("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("torch", "cuda"),
             ("onnxruntime", "cpu")]
    assert names == [n for n in order if n in names]
    assert (("torch", "cuda") in names) == HAS_CUDA


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine auto picks a GPU backend")
def test_auto_on_cpu_machine_picks_onnxruntime_and_says_why(shared_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="engines.inference.base"):
        engine = create_engine(shared_model_dir)
    assert isinstance(engine, OnnxEngine) and engine.device == "cpu"
    assert "auto backend: onnxruntime on cpu (no CUDA GPU visible to torch" in caplog.text


def test_auto_falls_through_a_backend_that_cannot_start(shared_model_dir, monkeypatch, caplog):
    # hardware detection replaced: pretend TensorRT was found but the device is wrong
    monkeypatch.setattr(auto, "candidates", lambda device=None: [
        ("tensorrt", "cpu", "pretend"), ("onnxruntime", "cpu", "fallback")])
    with caplog.at_level(logging.INFO, logger="engines.inference.base"):
        engine = create_engine(shared_model_dir, threads=1, precision="fp16")
    assert isinstance(engine, OnnxEngine)
    assert "tensorrt on cpu unavailable" in caplog.text
    assert "auto backend: onnxruntime on cpu (fallback)" in caplog.text
