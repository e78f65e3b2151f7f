"""What an engine hands back: the flat localization rows of a batch, and per frame.

A backend's :meth:`~engines.inference.base.Engine._run` returns one :class:`FlatLocs` per
chunk (rows of every frame in one set of columns, ordered by frame, gathered on the device
so only localizations cross to the host); the engine joins the chunks and
:func:`split_per_frame` turns them into the one :class:`~engines.types.Localizations` per
frame its callers get. :class:`PendingResult` is that list for a batch submitted and not
collected yet (:meth:`~engines.inference.base.Engine.submit_raw`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from engines.photometry import Photometry
from engines.types import Localizations


class FlatLocs(NamedTuple):
    """Localizations of a batch, rows ordered by frame (index within the batch).

    ``frame`` ``(N,)`` int64, ``xyz_nm`` ``(N, 3)``, ``confidence`` ``(N,)``, ``photons``
    ``(N,)``, ``background`` ``(N,)`` (photons per pixel and plane), ``precision_nm``
    ``(N, 3)``, ``chi2`` ``(N,)``, float32 (see :class:`~engines.types.Localizations`).
    """

    frame: np.ndarray
    xyz_nm: np.ndarray
    confidence: np.ndarray
    photons: np.ndarray
    background: np.ndarray
    precision_nm: np.ndarray
    chi2: np.ndarray

    def take(self, keep: np.ndarray) -> FlatLocs:
        return FlatLocs(*(col[keep] for col in self))

    def shifted(self, frames: int) -> FlatLocs:
        """The same rows with frame indices ``frames`` later."""
        return self._replace(frame=self.frame + frames)

    @classmethod
    def concat(cls, parts: Sequence[FlatLocs]) -> FlatLocs:
        return cls(*(np.concatenate(col) for col in zip(*parts, strict=True)))

    @classmethod
    def empty(cls) -> FlatLocs:
        z = np.zeros(0, np.float32)
        return cls(
            np.zeros(0, np.int64),
            np.zeros((0, 3), np.float32),
            z,
            z,
            z,
            np.zeros((0, 3), np.float32),
            z,
        )

    @classmethod
    def from_device(
        cls, frame: torch.Tensor, xyz_nm: torch.Tensor, confidence: torch.Tensor, ph: Photometry
    ) -> FlatLocs:
        """Rows from device tensors (one copy each back to the host)."""
        return cls(
            frame.cpu().numpy().astype(np.int64, copy=False),
            xyz_nm.float().cpu().numpy(),
            confidence.float().cpu().numpy(),
            ph.photons.float().cpu().numpy(),
            ph.background.float().cpu().numpy(),
            ph.crlb_nm.float().cpu().numpy(),
            ph.chi2.float().cpu().numpy(),
        )


def split_per_frame(flat: FlatLocs, batch: int, first_frame: int = 0) -> list[Localizations]:
    """Group flat localizations (rows sorted by frame) into one object per frame."""
    edges = np.searchsorted(np.asarray(flat.frame, dtype=np.int64), np.arange(batch + 1))
    bounds = edges.tolist()  # Python ints: slicing with them is several times faster
    cols = [np.asarray(c, np.float32) for c in flat[1:]]  # a no-op for float32 columns
    out = []
    for b in range(batch):
        lo, hi = bounds[b], bounds[b + 1]
        xyz, conf, photons, bg, precision, chi2 = (c[lo:hi] for c in cols)
        out.append(Localizations(first_frame + b, xyz, conf, photons, bg, precision, chi2))
    return out


class PendingResult:
    """A submitted batch (:meth:`~engines.inference.base.Engine.submit_raw`); :meth:`result`
    waits for it."""

    def __init__(self, collect: Callable[[], list[Localizations]]) -> None:
        self._collect: Callable[[], list[Localizations]] | None = collect
        self._value: list[Localizations] | None = None

    def result(self) -> list[Localizations]:
        if self._collect is not None:
            collect, self._collect = self._collect, None
            self._value = collect()
        assert self._value is not None
        return self._value
