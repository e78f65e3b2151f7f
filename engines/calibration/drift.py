"""Residual lateral misregistration of each plane, estimated from the localizations alone.

A plane whose camera is off by ``delta_k`` in x/y biases the molecules localized mostly
from that plane, i.e. those in its depth slab ``[k dz, (k + 1) dz)`` (paper Fig. 7b).
A structure that is continuous in depth (filaments) then shows a lateral jump of
``delta_k - delta_{k-1}`` where it crosses the boundary ``z = k dz`` between two slabs.

The jump is measured like redundant cross-correlation drift correction measures drift
between time bins, here between thin depth bands on both sides of each boundary:

* ``cross``: the 2D histogram of lateral differences of all pairs (lower band, upper band)
  across the boundary. For a filament crossing the boundary it is a streak along the
  filament's lateral direction, starting at the jump.
* ``ref``: the same histogram for two bands with the same spacing *inside* a slab
  (no jump): the same streaks, starting at 0.

The sub-bin peak of the cross-correlation of ``cross`` with ``ref`` is the jump, free of
the bias an inclined structure gives a plain peak fit. Bands leave a gap around the
boundary because the axial error moves molecules across it. Jumps are chained from the
reference plane (0) upwards.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, signal
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftSettings:
    """Geometry of the bands and the sliding window. Lengths in nm."""

    planes: int = 4
    dz_nm: float = 400.0
    window_locs: int = 20_000
    band_nm: float = 120.0
    gap_nm: float = 40.0
    radius_nm: float = 300.0
    max_offset_nm: float = 150.0
    bin_nm: float = 10.0
    min_pairs: int = 50
    every_frames: int = 50

    def __post_init__(self) -> None:
        if 3 * self.gap_nm + 2 * self.band_nm > self.dz_nm:
            raise ValueError(f"3 * gap_nm + 2 * band_nm = {3 * self.gap_nm + 2 * self.band_nm} "
                             f"must fit in one slab (dz_nm {self.dz_nm})")
        if self.planes < 2:
            raise ValueError(f"need at least 2 planes, got {self.planes}")


@dataclass(frozen=True)
class DriftEstimate:
    """Attributes:
    offsets_nm: ``(P, 2)`` estimated (x, y) offset of each plane's slab vs plane 0, nm
        (row 0 is 0; NaN where a boundary below had too few pairs).
    pairs: ``(P - 1,)`` signal pairs across each boundary.
    locs: localizations in the window.
    """

    offsets_nm: np.ndarray
    pairs: np.ndarray
    locs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "offsets_nm": [[_num(v) for v in row] for row in self.offsets_nm],
            "pairs": [int(v) for v in self.pairs],
            "locs": self.locs,
        }


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 2)


def _pair_hist(lower: np.ndarray, upper: np.ndarray, radius: float, bin_nm: float,
               centre: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """2D histogram of ``upper - lower - centre`` lateral differences within ``radius``.

    Zero-mean inside the disc: pairs of unrelated molecules are uniform and would pull a
    peak towards the disc centre.
    """
    n = int(np.ceil(radius / bin_nm))
    hist = np.zeros((2 * n + 1, 2 * n + 1))
    if len(lower) == 0 or len(upper) == 0:
        return hist, 0
    c = np.zeros(2) if centre is None else centre
    pairs = cKDTree(upper - c).sparse_distance_matrix(cKDTree(lower), radius,
                                                      output_type="ndarray")
    if len(pairs):
        d = upper[pairs["i"]] - c - lower[pairs["j"]]
        ix = np.round(d / bin_nm).astype(int) + n
        np.add.at(hist, (ix[:, 1], ix[:, 0]), 1.0)
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    disc = np.hypot(xx, yy) * bin_nm <= radius
    hist[disc] -= hist[disc].mean()
    hist[~disc] = 0.0
    return ndimage.gaussian_filter(hist, 1.0), len(pairs)


def _subbin_peak(corr: np.ndarray) -> tuple[float, float]:
    """(dx, dy) of the maximum relative to the centre, bins, by a 3-point parabola per axis."""
    iy, ix = np.unravel_index(np.argmax(corr), corr.shape)
    iy = int(np.clip(iy, 1, corr.shape[0] - 2))
    ix = int(np.clip(ix, 1, corr.shape[1] - 2))

    def vertex(a: float, b: float, c: float) -> float:
        den = a - 2 * b + c
        return 0.0 if den >= 0 else 0.5 * (a - c) / den

    dx = ix + vertex(*corr[iy, ix - 1:ix + 2])
    dy = iy + vertex(*corr[iy - 1:iy + 2, ix])
    return dx - (corr.shape[1] - 1) / 2, dy - (corr.shape[0] - 1) / 2


def boundary_jump(xyz_nm: np.ndarray, boundary_nm: float, s: DriftSettings
                  ) -> tuple[np.ndarray, int]:
    """Lateral jump ``(dx, dy)`` nm of the structure across ``z = boundary_nm`` and the
    number of pairs it rests on."""
    z = xyz_nm[:, 2]
    g, h, b = s.gap_nm, s.band_nm, boundary_nm

    def band(lo: float) -> np.ndarray:
        return xyz_nm[(z >= lo) & (z < lo + h), :2]

    l1, u1 = band(b - g - h), band(b + g)
    l2, u2 = band(b - 3 * g - 2 * h), band(b + 3 * g + h)
    ref = (_pair_hist(l2, l1, s.radius_nm, s.bin_nm)[0]
           + _pair_hist(u1, u2, s.radius_nm, s.bin_nm)[0])
    if not np.any(ref):
        return np.full(2, np.nan), 0
    jump = np.zeros(2)
    m = int(np.ceil(s.max_offset_nm / s.bin_nm))
    for _ in range(3):
        # the cross pattern is cut to the same disc as the reference, around the current
        # estimate, so that streaks of inclined filaments are truncated alike
        cross, n_cross = _pair_hist(l1, u1, s.radius_nm, s.bin_nm, centre=jump)
        if n_cross < s.min_pairs:
            return np.full(2, np.nan), n_cross
        corr = signal.fftconvolve(cross, ref[::-1, ::-1], mode="same")
        c = corr.shape[0] // 2
        step = np.array(_subbin_peak(corr[c - m:c + m + 1, c - m:c + m + 1])) * s.bin_nm
        jump = jump + step
        if np.hypot(*step) < 0.5 or np.hypot(*jump) > s.max_offset_nm:
            break
    return jump, n_cross


def estimate_offsets(xyz_nm: np.ndarray, settings: DriftSettings) -> DriftEstimate:
    """Offsets of every plane's slab vs plane 0 from ``(N, 3)`` localizations, nm."""
    xyz = np.asarray(xyz_nm, dtype=np.float64).reshape(-1, 3)
    offsets = np.zeros((settings.planes, 2))
    pairs = np.zeros(settings.planes - 1, dtype=int)
    for k in range(1, settings.planes):
        jump, pairs[k - 1] = boundary_jump(xyz, k * settings.dz_nm, settings)
        offsets[k] = offsets[k - 1] + jump
    return DriftEstimate(offsets, pairs, len(xyz))


class DriftEstimator:
    """Sliding-window estimator fed with published localizations (a service observer).

    ``observe`` appends a frame's localizations and re-estimates every ``every_frames``
    frames; ``stats`` reports the last estimate for ``GET /stats``.
    """

    name = "drift"

    def __init__(self, settings: DriftSettings | None = None) -> None:
        self.settings = settings or DriftSettings()
        self._chunks: deque[np.ndarray] = deque()
        self._count = 0
        self._frames = 0
        self._lock = threading.Lock()
        self._last: DriftEstimate | None = None

    def add(self, xyz_nm: np.ndarray) -> None:
        """Append ``(N, 3)`` localizations, dropping the oldest beyond the window."""
        arr = np.asarray(xyz_nm, dtype=np.float64).reshape(-1, 3)
        with self._lock:
            self._chunks.append(arr)
            self._count += len(arr)
            while self._chunks and self._count - len(self._chunks[0]) >= self.settings.window_locs:
                self._count -= len(self._chunks.popleft())

    def window(self) -> np.ndarray:
        with self._lock:
            chunks = list(self._chunks)
        return np.concatenate(chunks) if chunks else np.zeros((0, 3))

    def estimate(self) -> DriftEstimate:
        est = estimate_offsets(self.window(), self.settings)
        with self._lock:
            self._last = est
        return est

    def observe(self, msg: Any) -> None:
        """Service hook: ``msg`` is a :class:`service.wire.LocsMessage`."""
        self.add(msg.locs.xyz_nm)
        self._frames += 1
        if self._frames % self.settings.every_frames == 0:
            est = self.estimate()
            log.debug("drift estimate %s", est.to_dict())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            last = self._last
            count = self._count
        out: dict[str, Any] = {"window_locs": count, "frames": self._frames}
        out.update(last.to_dict() if last else {"offsets_nm": None})
        return out


def corrected_affines(affines: dict[str, np.ndarray], planes: dict[str, int],
                      offsets_nm: np.ndarray, px_nm: float) -> dict[str, np.ndarray]:
    """Registration fed back: shift each camera's affine so its plane's offset vanishes.

    A slab that appears displaced by ``+offset`` comes from a camera mapped ``offset`` too
    far; the translation of its affine (reference pixels) is reduced by ``offset / px_nm``.
    """
    out = {}
    for name, aff in affines.items():
        new = np.array(aff, dtype=np.float64)
        off = offsets_nm[planes[name]]
        if np.all(np.isfinite(off)):
            new[:, 2] -= off / px_nm
        out[name] = new
    return out
