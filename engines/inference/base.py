"""The engine interface: raw frame batches in, per-frame localizations out.

Validation, dtype handling, threshold and splitting per frame are written once here;
a backend implements :meth:`Engine._run`, which returns the localizations of a validated
float32 batch already thresholded and gathered on its device.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from engines.errors import EngineError, FormatError
from engines.modeldir import ModelInfo, read_info, resolve_model
from engines.types import Localizations

log = logging.getLogger(__name__)

ACCEPTED_DTYPES = (np.uint16, np.float32, np.float64, np.uint8, np.int16, np.int32)


class Engine(ABC):
    """Runs one model. Thread-safe: calls are serialised by a lock."""

    backend: str = "abstract"

    def __init__(self, model: str | Path, *, threshold: float = 0.5) -> None:
        self.model_dir = resolve_model(model)
        self.info: ModelInfo = read_info(self.model_dir)
        self.threshold = threshold
        self._lock = threading.Lock()

    @property
    def planes(self) -> int:
        return self.info.planes

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {value}")
        self._threshold = float(value)

    def validate(self, frames: np.ndarray) -> np.ndarray:
        """Check a batch and return it as C-contiguous float32 ``(B, P, H, W)``."""
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise FormatError(
                f"expected frames of shape (batch, {self.planes}, H, W), got shape {arr.shape}"
            )
        if arr.dtype not in ACCEPTED_DTYPES:
            raise FormatError(f"expected uint16 or float32 frames, got {arr.dtype}")
        b, p, h, w = arr.shape
        if p != self.planes:
            raise FormatError(
                f"model {self.info.name!r} expects {self.planes} planes, got {p} "
                f"(frames of shape {arr.shape})"
            )
        if b == 0 or h == 0 or w == 0:
            raise FormatError(f"empty batch: frames of shape {arr.shape}")
        out = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.dtype.kind == "f" and not np.isfinite(out).all():
            raise FormatError(f"frames contain {int((~np.isfinite(out)).sum())} NaN/inf values")
        return out

    def infer(self, frames: np.ndarray, threshold: float | None = None,
              first_frame: int = 0) -> list[Localizations]:
        """Localize a batch; returns one :class:`Localizations` per frame (empty ones too).

        Args:
            frames: ``(B, P, H, W)`` (or one ``(P, H, W)`` frame) of raw camera values.
            threshold: confidence threshold (default: the engine's current one).
            first_frame: frame index of ``frames[0]``; later frames count up from it.
        """
        batch = self.validate(frames)
        tau = self.threshold if threshold is None else float(threshold)
        with self._lock:
            frame_idx, xyz, conf = self._run(batch, tau)
        return split_per_frame(frame_idx, xyz, conf, batch.shape[0], first_frame)

    @abstractmethod
    def _run(self, frames: np.ndarray, threshold: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Backend work: ``(B, P, H, W)`` float32 -> (frame (N,), xyz_nm (N, 3), conf (N,))."""

    def warmup(self, height: int = 64, width: int = 64, batch: int = 1) -> None:
        """Run once on a blank batch (allocations, kernel selection, graph capture)."""
        bg = self.info.input_offset
        self._run(np.full((batch, self.planes, height, width), bg, np.float32), 0.99)

    def close(self) -> None:
        """Release device resources."""


def split_per_frame(frame_idx: np.ndarray, xyz: np.ndarray, conf: np.ndarray,
                    batch: int, first_frame: int = 0) -> list[Localizations]:
    """Group flat localizations (rows sorted by frame) into one object per frame."""
    frame_idx = np.asarray(frame_idx, dtype=np.int64)
    bounds = np.searchsorted(frame_idx, np.arange(batch + 1))
    return [
        Localizations(first_frame + b, xyz[bounds[b]:bounds[b + 1]].astype(np.float32),
                      conf[bounds[b]:bounds[b + 1]].astype(np.float32))
        for b in range(batch)
    ]


BACKENDS = ("torch", "onnxruntime", "tensorrt")


def create_engine(model: str | Path = "default", backend: str = "auto", *,
                  threshold: float = 0.5, device: str | None = None) -> Engine:
    """Build an engine; ``auto`` picks the fastest backend this machine can run."""
    if backend == "auto":
        from engines.inference.auto import pick_backend

        backend, device = pick_backend(device)
    if backend == "torch":
        from engines.inference.torch_backend import TorchEngine

        return TorchEngine(model, threshold=threshold, device=device or "cpu")
    if backend == "onnxruntime":
        from engines.inference.onnx_backend import OnnxEngine

        return OnnxEngine(model, threshold=threshold, device=device or "cpu")
    if backend == "tensorrt":
        from engines.inference.tensorrt_backend import TensorRTEngine

        return TensorRTEngine(model, threshold=threshold)
    raise EngineError(f"unknown backend {backend!r}; expected auto or one of {BACKENDS}")
