"""Backend choice for ``backend="auto"``: TensorRT > ORT CUDA > torch CUDA > ORT CPU.

Only cheap checks happen here (is the package importable, does torch see a GPU, does
onnxruntime have the CUDA provider); :func:`engines.inference.base.create_engine` tries the
candidates in order and falls through to the next one if a backend fails to start.
"""

from __future__ import annotations

import importlib.util
import logging

import onnxruntime as ort
import torch

log = logging.getLogger(__name__)


def cuda_gpu_visible() -> bool:
    """True if torch sees a CUDA GPU."""
    return torch.cuda.is_available()


def candidates(device: str | None = None) -> list[tuple[str, str, str]]:
    """``(backend, device, reason)`` in order of preference for this machine.

    ``device="cpu"`` restricts the choice to the CPU; ``"cuda:N"`` picks that GPU.
    """
    out: list[tuple[str, str, str]] = []
    skipped: list[str] = []
    if device == "cpu":
        skipped.append("CPU asked for")
    elif not cuda_gpu_visible():
        skipped.append(f"no CUDA GPU visible to torch {torch.__version__}")
    else:
        dev = device or "cuda"
        name = torch.cuda.get_device_name(torch.device(dev))
        if importlib.util.find_spec("tensorrt") is not None:
            out.append(("tensorrt", dev, f"TensorRT installed and a {name} present"))
        else:
            skipped.append("TensorRT not installed (pip install voxloc[tensorrt])")
        if "CUDAExecutionProvider" in ort.get_available_providers():
            out.append(("onnxruntime", dev, f"ONNX Runtime CUDA provider and a {name}"))
        else:
            skipped.append("onnxruntime has no CUDA provider (pip install voxloc[gpu])")
        out.append(("torch", dev, f"torch CUDA on a {name}"
                    + (f"; {'; '.join(skipped)}" if skipped else "")))
    out.append(("onnxruntime", "cpu", "; ".join(skipped) or "CPU fallback"))
    return out


def pick_backend(device: str | None = None) -> tuple[str, str]:
    """(backend, device) of the first candidate; logs which was picked and why."""
    backend, dev, reason = candidates(device)[0]
    log.info("auto backend: %s on %s (%s)", backend, dev, reason)
    return backend, dev
