"""Cheap probes of what this machine can run: CUDA GPUs, TensorRT, ONNX Runtime providers,
the CPU's native bfloat16 instructions.

Nothing here loads a model or starts a backend; :mod:`engines.inference.factory` orders
the candidates from these answers and falls through when a backend then fails to start.
"""

from __future__ import annotations

import importlib.util

import torch


def cuda_gpu_visible() -> bool:
    """True if torch sees a CUDA GPU."""
    return torch.cuda.is_available()


def cuda_device_name(device: str = "cuda") -> str:
    """Name of the CUDA GPU ``device`` (``"cuda"`` or ``"cuda:N"``) as torch reports it."""
    return torch.cuda.get_device_name(torch.device(device))


def tensorrt_installed() -> bool:
    """True if the ``tensorrt`` package is importable (not imported here)."""
    return importlib.util.find_spec("tensorrt") is not None


def onnxruntime_providers() -> list[str]:
    """ONNX Runtime's available execution providers (``CUDAExecutionProvider``, ...)."""
    import onnxruntime as ort  # imported here: the torch backend needs no onnxruntime

    return list(ort.get_available_providers())


def onnxruntime_has_cuda() -> bool:
    """True if ONNX Runtime has the CUDA execution provider (``onnxruntime-gpu``)."""
    return "CUDAExecutionProvider" in onnxruntime_providers()


def cpu_bf16_instructions() -> str | None:
    """Name of the CPU's native bfloat16 instructions (``"AMX"``, ``"AVX512-BF16"``), or None.

    Without them oneDNN emulates bfloat16 and it is slower than float32.
    """
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return name
        except RuntimeError:  # pragma: no cover - torch built without the cpuinfo probe
            continue
    return None
