"""``auto``: the choice order, its log line, the CPU bfloat16 choice, falling through."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
from inference_parity import HAS_CUDA

import engines.inference.factory as factory
from engines.errors import EngineError
from engines.inference import create_engine, hardware
from engines.inference.onnx_backend import OnnxEngine
from engines.inference.torch_backend import TorchEngine

CPU_BF16 = hardware.cpu_bf16_instructions()


def test_cpu_bf16_detection_agrees_with_torch():
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert (CPU_BF16 is not None) == native


@pytest.mark.parametrize("isa", ["AVX512-BF16", None])
def test_cpu_candidates_follow_the_cpus_bfloat16(monkeypatch, isa):
    # the CPU's instruction set is outside the project: both answers are checked here
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: isa)
    got = factory.candidates("cpu")
    if isa:
        assert [(c.backend, c.device, c.options) for c in got] == [
            ("torch", "cpu", {"precision": "bf16"}),
            ("onnxruntime", "cpu", {}),
        ]
        assert "CPU has AVX512-BF16" in got[0].reason
    else:
        assert [(c.backend, c.device) for c in got] == [("onnxruntime", "cpu")]
        assert got[0].reason == "CPU asked for; CPU has no native bfloat16 (AVX512-BF16/AMX)"


def test_env_turns_the_cpu_bfloat16_choice_off(monkeypatch):
    monkeypatch.setenv(factory.CPU_BF16_ENV, "0")
    got = factory.candidates("cpu")
    assert [(c.backend, c.device, c.reason) for c in got] == [
        ("onnxruntime", "cpu", f"CPU asked for; {factory.CPU_BF16_ENV}=0")
    ]


def test_order():
    names = [(c.backend, c.device.split(":")[0]) for c in factory.candidates()]
    assert names[-1] == ("onnxruntime", "cpu")
    order = [
        ("tensorrt", "cuda"),
        ("onnxruntime", "cuda"),
        ("torch", "cuda"),
        ("torch", "cpu"),
        ("onnxruntime", "cpu"),
    ]
    assert names == [n for n in order if n in names]
    assert (("torch", "cuda") in names) == HAS_CUDA
    assert (("torch", "cpu") in names) == (CPU_BF16 is not None)


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU machine auto picks a GPU backend")
def test_auto_on_cpu_machine_says_what_it_picked(shared_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="engines.inference.factory"):
        engine = create_engine(shared_model_dir)
    assert engine.device == "cpu"
    if CPU_BF16:
        assert isinstance(engine, TorchEngine) and engine.precision == "bf16"
        assert engine.label == "torch/cpu/bf16"
        assert (
            f"auto backend: torch on cpu (no CUDA GPU visible to torch {torch.__version__}; "
            f"CPU has {CPU_BF16}: bfloat16)" in caplog.text
        )
    else:
        assert isinstance(engine, OnnxEngine) and engine.label == "onnxruntime/cpu"
        assert "auto backend: onnxruntime on cpu (no CUDA GPU visible to torch" in caplog.text


def test_auto_with_fp32_asked_for_skips_the_bfloat16_candidate(shared_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="engines.inference.factory"):
        engine = create_engine(shared_model_dir, device="cpu", precision="fp32")
    assert isinstance(engine, OnnxEngine)
    if CPU_BF16:
        assert "auto backend: torch on cpu skipped (precision=fp32 asked for)" in caplog.text


def test_auto_falls_through_a_backend_that_cannot_start(shared_model_dir, monkeypatch, caplog):
    # hardware detection replaced: pretend TensorRT was found but the device is wrong
    monkeypatch.setattr(
        factory,
        "candidates",
        lambda device=None: [
            factory.Candidate("tensorrt", "cpu", "pretend"),
            factory.Candidate("onnxruntime", "cpu", "fallback"),
        ],
    )
    with caplog.at_level(logging.INFO, logger="engines.inference.factory"):
        engine = create_engine(shared_model_dir, threads=1, precision="fp16")
    assert isinstance(engine, OnnxEngine)
    assert "tensorrt on cpu unavailable" in caplog.text
    assert "auto backend: onnxruntime on cpu (fallback)" in caplog.text


@pytest.mark.parametrize("backend", sorted(factory.BACKENDS))
def test_each_backend_declares_the_options_its_constructor_takes(backend):
    try:
        cls = factory.backend_class(backend)
    except ImportError as exc:  # BackendUnavailableError: its package is not installed
        pytest.skip(str(exc))
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "model", "threshold"}
    assert cls.options == params - {"device"}


def test_a_named_backend_refuses_an_option_it_does_not_take(shared_model_dir):
    with pytest.raises(EngineError, match="'onnxruntime' takes no option precision"):
        create_engine(shared_model_dir, "onnxruntime", precision="fp16")
