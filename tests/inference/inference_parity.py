"""Backend parameters, reference localizations and set comparison for the engine tests."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.decode import decode
from engines.modeldir import load_model
from engines.types import Localizations

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()

NO_CUDA = pytest.mark.skipif(
    not HAS_CUDA, reason=f"no CUDA GPU visible to torch {torch.__version__}"
)
NO_ORT_CUDA = pytest.mark.skipif(
    not (HAS_CUDA and HAS_ORT_CUDA),
    reason="needs a CUDA GPU and onnxruntime-gpu (pip install voxloc[gpu])",
)
NO_TRT = pytest.mark.skipif(
    not (HAS_CUDA and HAS_TRT),
    reason="needs a CUDA GPU and TensorRT (pip install voxloc[tensorrt])",
)
GPU = pytest.mark.gpu  # `pytest -m "not gpu"` deselects every test that needs one
ON_CUDA, ON_ORT_CUDA, ON_TRT = (GPU, NO_CUDA), (GPU, NO_ORT_CUDA), (GPU, NO_TRT)

# (id, backend, device, options, coordinate tolerance nm, confidence margin at threshold)
BACKENDS = [
    pytest.param("torch", "cpu", {}, 0.1, 1e-4, id="torch-cpu"),
    pytest.param("onnxruntime", "cpu", {}, 0.1, 1e-4, id="onnxruntime-cpu"),
    pytest.param("torch", "cpu", {"precision": "bf16"}, 5.0, 2e-2, id="torch-cpu-bf16"),
    pytest.param("torch", "cuda", {}, 0.1, 1e-3, id="torch-cuda", marks=ON_CUDA),
    pytest.param(
        "torch", "cuda", {"cuda_graphs": True}, 0.1, 1e-3, id="torch-cuda-graphs", marks=ON_CUDA
    ),
    pytest.param(
        "torch",
        "cuda",
        {"precision": "fp16", "cuda_graphs": True},
        5.0,
        2e-2,
        id="torch-cuda-fp16-graphs",
        marks=ON_CUDA,
    ),
    pytest.param(
        "torch", "cuda", {"precision": "bf16"}, 5.0, 2e-2, id="torch-cuda-bf16", marks=ON_CUDA
    ),
    pytest.param("onnxruntime", "cuda", {}, 0.1, 1e-3, id="onnxruntime-cuda", marks=ON_ORT_CUDA),
    pytest.param("tensorrt", "cuda", {}, 1.0, 1e-3, id="tensorrt-fp32", marks=ON_TRT),
    pytest.param(
        "tensorrt", "cuda", {"precision": "fp16"}, 5.0, 2e-2, id="tensorrt-fp16", marks=ON_TRT
    ),
]
REDUCED_PRECISIONS = ("fp16", "bf16")
CPU_BACKENDS = ["torch", "onnxruntime"]


def reference_locs(model_dir, frames: np.ndarray, threshold: float) -> list[Localizations]:
    """The unfused training network (conv -> BN -> ReLU), eager float32, decode on CPU."""
    net, info = load_model(model_dir)
    g = info.settings.geometry
    with torch.inference_mode():
        b, xyz, conf = decode(
            net(torch.from_numpy(frames)), threshold, px_nm=g.px_nm, dz_nm=g.dz_nm
        )
    b, xyz, conf = b.numpy(), xyz.numpy(), conf.numpy()
    return [Localizations(f, xyz[b == f], conf[b == f]) for f in range(frames.shape[0])]


def unmatched(
    a: Localizations, b: Localizations, *, tol_nm: float, threshold: float, margin: float
) -> tuple[int, int, float]:
    """Compare two frames' localizations.

    Returns ``(missing, extra, worst_nm)``: rows of ``a`` with confidence beyond
    ``threshold + margin`` that have no row of ``b`` within ``tol_nm``, the same for ``b``
    against ``a``, and the largest distance between matched rows.
    """
    if len(a) == 0 or len(b) == 0:
        sure_a = int((a.confidence > threshold + margin).sum())
        sure_b = int((b.confidence > threshold + margin).sum())
        return sure_a, sure_b, 0.0
    dist = np.linalg.norm(a.xyz_nm[:, None, :] - b.xyz_nm[None, :, :], axis=-1)
    a_best, b_best = dist.min(axis=1), dist.min(axis=0)
    missing = int(((a_best > tol_nm) & (a.confidence > threshold + margin)).sum())
    extra = int(((b_best > tol_nm) & (b.confidence > threshold + margin)).sum())
    matched = a_best[a_best <= tol_nm]
    return missing, extra, float(matched.max()) if matched.size else 0.0
