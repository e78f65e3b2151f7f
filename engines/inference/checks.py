"""Checks and host-side helpers of the engines' input (:mod:`engines.inference.base`)."""

from __future__ import annotations

import numpy as np
import torch

from engines.errors import NonFiniteError
from engines.inference.registration import PlaneRegistration, raw_tensor, register


def register_on_host(sets: list[np.ndarray], registration: PlaneRegistration) -> np.ndarray:
    """``(B, P, H, W)`` float32 model units from raw sets (torch on the CPU)."""
    _, h, w = sets[0].shape
    raw = torch.stack([raw_tensor(s) for s in sets])
    base, gain = registration.scale_shift()
    grid = None if registration.is_identity else torch.from_numpy(registration.grid(h, w))
    with torch.inference_mode():
        out = register(raw, grid, torch.from_numpy(base), torch.from_numpy(gain))
    return np.ascontiguousarray(out.numpy())


def check_finite(frames: np.ndarray) -> None:
    """:class:`NonFiniteError` naming the first frame of ``(B, P, H, W)`` with NaN/inf pixels.

    The one scan for non-finite pixels on the way into an engine (``voxloc localize``
    reports the frame from the error's attributes).
    """
    if np.isfinite(frames).all():
        return
    per_frame = (~np.isfinite(frames)).reshape(frames.shape[0], -1).sum(axis=1)
    b = int(np.flatnonzero(per_frame)[0])
    total = int(per_frame.sum())
    raise NonFiniteError(
        f"frames contain {total} NaN/inf values (frames of shape {frames.shape}; "
        f"first in frame {b} of the batch)",
        frame=b,
        count=int(per_frame[b]),
        total=total,
    )


def check_threshold(value: float) -> float:
    tau = float(value)
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {value}")
    return tau


def pad_to_bucket(chunk: np.ndarray, fill: float, cap: int | None = None) -> np.ndarray:
    """Pad the batch axis with blank (``fill``) frames up to the next power of two."""
    n = chunk.shape[0]
    bucket = 1 << (n - 1).bit_length()
    if cap is not None:
        bucket = min(bucket, max(cap, n))
    if bucket == n:
        return chunk
    pad = np.full((bucket - n, *chunk.shape[1:]), fill, dtype=chunk.dtype)
    return np.concatenate([chunk, pad])
