"""Backend choice for ``backend="auto"``.

GPU: TensorRT > ONNX Runtime CUDA > torch CUDA. CPU: torch in bfloat16 where the CPU
computes bfloat16 natively (AVX512-BF16 or AMX: about twice ONNX Runtime's float32 on the
same cores, coordinates 0.3 nm rms lateral / 0.8 nm axial from float32), else ONNX
Runtime float32.

Only cheap checks happen here (is the package importable, does torch see a GPU, does
onnxruntime have the CUDA provider, which instructions the CPU has);
:func:`engines.inference.base.create_engine` tries the candidates in order and falls
through to the next one if a backend fails to start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, NamedTuple

import onnxruntime as ort
import torch

log = logging.getLogger(__name__)

# VOXLOC_CPU_BF16=0 keeps auto on float32 on a CPU that has bfloat16
CPU_BF16_ENV = "VOXLOC_CPU_BF16"


class Candidate(NamedTuple):
    backend: str
    device: str
    reason: str
    options: dict[str, Any] = {}


def cuda_gpu_visible() -> bool:
    """True if torch sees a CUDA GPU."""
    return torch.cuda.is_available()


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


def cpu_bf16_enabled() -> tuple[str | None, str]:
    """(instructions, why not) for the CPU bfloat16 candidate."""
    if os.environ.get(CPU_BF16_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"{CPU_BF16_ENV}=0"
    isa = cpu_bf16_instructions()
    return isa, "" if isa else "CPU has no native bfloat16 (AVX512-BF16/AMX)"


def candidates(device: str | None = None) -> list[Candidate]:
    """Candidates in order of preference for this machine, each with the options it needs.

    ``device="cpu"`` restricts the choice to the CPU; ``"cuda:N"`` picks that GPU.
    """
    out: list[Candidate] = []
    skipped: list[str] = []
    if device == "cpu":
        skipped.append("CPU asked for")
    elif not cuda_gpu_visible():
        skipped.append(f"no CUDA GPU visible to torch {torch.__version__}")
    else:
        dev = device or "cuda"
        name = torch.cuda.get_device_name(torch.device(dev))
        if importlib.util.find_spec("tensorrt") is not None:
            out.append(Candidate("tensorrt", dev, f"TensorRT installed and a {name} present"))
        else:
            skipped.append("TensorRT not installed (pip install voxloc[tensorrt])")
        if "CUDAExecutionProvider" in ort.get_available_providers():
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
