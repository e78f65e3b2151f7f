"""Building engines: the backend registry, :func:`create_engine` and ``backend="auto"``.

``auto`` order. GPU: TensorRT > ONNX Runtime CUDA > torch CUDA. CPU: torch in bfloat16
where the CPU computes bfloat16 natively (AVX512-BF16 or AMX: about twice ONNX Runtime's
float32 on the same cores, coordinates 0.3 nm rms lateral / 0.8 nm axial from float32),
else ONNX Runtime float32. The candidates come from cheap probes
(:mod:`engines.inference.hardware`); :func:`create_engine` tries them in order and falls
through to the next one if a backend fails to start.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from engines.errors import EngineError
from engines.inference import hardware
from engines.inference.base import Engine

log = logging.getLogger(__name__)

# backend name -> "module:class", imported on first use (a backend may need an extra)
BACKENDS: dict[str, str] = {
    "torch": "engines.inference.torch_backend:TorchEngine",
    "onnxruntime": "engines.inference.onnx_backend:OnnxEngine",
    "tensorrt": "engines.inference.tensorrt_backend:TensorRTEngine",
    # a measurement tool: no device compute, no localizations (never picked by auto)
    "null": "engines.inference.null_backend:NullEngine",
}

# VOXLOC_CPU_BF16=0 keeps auto on float32 on a CPU that has bfloat16
CPU_BF16_ENV = "VOXLOC_CPU_BF16"


class Candidate(NamedTuple):
    backend: str
    device: str
    reason: str
    options: dict[str, Any] = {}


class EngineClass(Protocol):
    """A backend's engine class: built from a model, a threshold, a device and the options
    it declares (:attr:`Engine.options`)."""

    options: frozenset[str]

    def __call__(
        self, model: str | Path, *, threshold: float, device: str = ..., **options: Any
    ) -> Engine: ...


def backend_class(backend: str) -> EngineClass:
    """The engine class of a backend name (imports it; may raise BackendUnavailableError)."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; expected auto or one of {tuple(BACKENDS)}")
    module, _, name = BACKENDS[backend].partition(":")
    cls: EngineClass = getattr(importlib.import_module(module), name)
    return cls


def cpu_bf16_enabled() -> tuple[str | None, str]:
    """(instructions, why not) for the CPU bfloat16 candidate."""
    if os.environ.get(CPU_BF16_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"{CPU_BF16_ENV}=0"
    isa = hardware.cpu_bf16_instructions()
    return isa, "" if isa else "CPU has no native bfloat16 (AVX512-BF16/AMX)"


def candidates(device: str | None = None) -> list[Candidate]:
    """Candidates in order of preference for this machine, each with the options it needs.

    ``device="cpu"`` restricts the choice to the CPU; ``"cuda:N"`` picks that GPU.
    """
    out: list[Candidate] = []
    skipped: list[str] = []
    if device == "cpu":
        skipped.append("CPU asked for")
    elif not hardware.cuda_gpu_visible():
        skipped.append(f"no CUDA GPU visible to torch {torch.__version__}")
    else:
        dev = device or "cuda"
        name = hardware.cuda_device_name(dev)
        if hardware.tensorrt_installed():
            out.append(Candidate("tensorrt", dev, f"TensorRT installed and a {name} present"))
        else:
            skipped.append("TensorRT not installed (pip install voxloc[tensorrt])")
        if hardware.onnxruntime_has_cuda():
            out.append(Candidate("onnxruntime", dev, f"ONNX Runtime CUDA provider and a {name}"))
        else:
            skipped.append("onnxruntime has no CUDA provider (pip install voxloc[gpu])")
        out.append(
            Candidate(
                "torch",
                dev,
                f"torch CUDA on a {name}" + (f"; {'; '.join(skipped)}" if skipped else ""),
            )
        )
    isa, why_not = cpu_bf16_enabled()
    if isa:
        out.append(
            Candidate(
                "torch",
                "cpu",
                "; ".join([*skipped, f"CPU has {isa}: bfloat16"]),
                {"precision": "bf16"},
            )
        )
    else:
        skipped.append(why_not)
    out.append(Candidate("onnxruntime", "cpu", "; ".join(skipped) or "CPU fallback"))
    return out


def create_engine(
    model: str | Path = "default",
    backend: str = "auto",
    *,
    threshold: float = 0.5,
    device: str | None = None,
    precision: str | None = None,
    **options: Any,
) -> Engine:
    """Build an engine; ``auto`` picks the fastest backend this machine can run.

    ``precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``; None: the backend's default) and
    ``options`` (e.g. ``cuda_graphs=True``, ``threads=2``) go to the backend, which
    declares what it takes (:attr:`Engine.options`). A named backend refuses an option it
    does not take; with ``auto`` each candidate gets the options it takes, and a candidate
    that fails to start is logged and skipped.
    """
    if precision is not None:
        options["precision"] = precision
    if backend != "auto":
        cls = backend_class(backend)
        unknown = sorted(set(options) - cls.options)
        if unknown:
            raise EngineError(
                f"backend {backend!r} takes no option {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(cls.options)) or 'none'}"
            )
        kwargs = {"device": device} if device is not None else {}
        return cls(model, threshold=threshold, **kwargs, **options)
    return _create_auto(model, threshold, device, options)


def _create_auto(
    model: str | Path, threshold: float, device: str | None, options: dict[str, Any]
) -> Engine:
    errors = []
    for name, dev, reason, wanted in candidates(device):
        clash = [k for k, v in wanted.items() if options.get(k, v) != v]
        if clash:  # e.g. precision="fp32" asked for: skip the CPU bfloat16 candidate
            asked = ", ".join(f"{k}={options[k]}" for k in clash)
            log.info("auto backend: %s on %s skipped (%s asked for)", name, dev, asked)
            continue
        try:
            cls = backend_class(name)
            kw = {k: v for k, v in {**wanted, **options}.items() if k in cls.options}
            engine = cls(model, threshold=threshold, device=dev, **kw)
        except EngineError as exc:
            log.warning("auto backend: %s on %s unavailable (%s); trying the next", name, dev, exc)
            errors.append(f"{name} on {dev}: {exc}")
            continue
        log.info("auto backend: %s on %s (%s)", name, dev, reason)
        return engine
    raise EngineError("no inference backend could start: " + "; ".join(errors))
