"""A calibrated precision per localization: the Cramer-Rao bound scaled per model and axis.

The network's errors sit above the bound (about 3x at low density for the default model),
by a factor that differs between x, y and z, and they grow where another molecule is
close (the network mislocalizes overlapping images, which a single-molecule bound knows
nothing of). So the precision a model reports is, per axis a in x, y, z,

    sigma_a^2 = (k_a * crlb_a)^2 + floor_a^2 + crowding_a^2 * exp(-(d / R)^2)

with ``crlb_a`` the bound at the localization's own estimate
(:class:`engines.photometry.PhotometryFit`), ``d`` the lateral distance to the nearest
other localization of the same frame and ``R`` = :data:`CROWDING_RADIUS_NM`; ``k_a``,
``floor_a`` and ``crowding_a`` are fitted on frames simulated from the model's own settings
(:func:`fit_axis`, run by ``voxloc evaluate --calibrate-precision``) and recorded in
``model.json`` under ``"precision"``. A model without that record reports NaN precision:
an uncalibrated bound would claim three times the accuracy the network has.
docs/photometry.md argues the choice and gives the measured figures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

AXES = ("x", "y", "z")
METHOD = (
    "calibrated CRLB: sigma^2 = (k * crlb)^2 + floor^2 + crowding^2 * exp(-(d / R)^2) "
    "per axis, d the distance to the nearest other localization of the frame"
)
CROWDING_RADIUS_NM = 400.0  # the excess error of a neighbour falls off over ~2 PSF widths
CROWDING_EDGES_NM = (0.0, 300.0, 600.0, 1000.0, math.inf)  # distance bins of the fit


class PrecisionCalibration(BaseModel):
    """``model.json`` ``"precision"``: the fitted constants and how they were measured."""

    model_config = ConfigDict(frozen=True, extra="allow")

    method: str = METHOD
    k: tuple[float, float, float] = Field(description="CRLB multiplier of x, y, z")
    floor_nm: tuple[float, float, float] = Field(description="precision floor of x, y, z, nm")
    crowding_nm: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="excess error of x, y, z with a neighbour at d = 0, nm"
    )
    crowding_radius_nm: float = Field(CROWDING_RADIUS_NM, gt=0)
    window_px: int = Field(ge=3, description="photometry window the CRLB was computed in")

    def apply(self, crlb_nm: torch.Tensor, neighbour_nm: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` calibrated one-sigma precision from ``(N, 3)`` bounds and the
        ``(N,)`` distance to each localization's nearest neighbour (inf: none), nm."""
        dev, dt = crlb_nm.device, crlb_nm.dtype
        k = torch.tensor(self.k, dtype=dt, device=dev)
        f = torch.tensor(self.floor_nm, dtype=dt, device=dev)
        g = torch.tensor(self.crowding_nm, dtype=dt, device=dev)
        near = torch.exp(-((neighbour_nm.to(dt) / self.crowding_radius_nm) ** 2))[:, None]
        return torch.sqrt((k * crlb_nm) ** 2 + f**2 + g**2 * near)


def nearest_neighbour_nm(
    frame: torch.Tensor, xy_nm: torch.Tensor, *, max_pairs: int = 1 << 22
) -> torch.Tensor:
    """``(N,)`` lateral distance from each localization to the nearest other one of its
    frame (inf for a lone one), on the tensors' device; rows sorted by frame.

    Frames are padded to the busiest one's count and taken in groups of at most
    ``max_pairs`` pairs, so memory stays bounded on dense, large frames."""
    n = frame.shape[0]
    out = torch.full((n,), math.inf, device=xy_nm.device, dtype=torch.float32)
    if n < 2:
        return out
    frames, counts = torch.unique_consecutive(frame, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    m = int(counts.max())
    slot = torch.arange(n, device=frame.device) - torch.repeat_interleave(starts, counts)
    which = torch.repeat_interleave(torch.arange(len(frames), device=frame.device), counts)
    padded = torch.full((len(frames), m, 2), math.nan, device=xy_nm.device)
    padded[which, slot] = xy_nm.float()
    group = max(1, max_pairs // (m * m))
    best = torch.empty(len(frames), m, device=xy_nm.device)
    eye = torch.eye(m, dtype=torch.bool, device=xy_nm.device)
    for g0 in range(0, len(frames), group):
        p = padded[g0 : g0 + group]
        d = torch.cdist(p, p).nan_to_num(math.inf).masked_fill(eye, math.inf)
        best[g0 : g0 + group] = d.min(dim=2).values
    return best[which, slot]


def fit_axis(
    error_nm: np.ndarray, crlb_nm: np.ndarray, neighbour_nm: np.ndarray, *, bins: int = 5
) -> tuple[float, float, float]:
    """``(k, floor, crowding)`` of one axis from matched errors, their bounds and their
    nearest-neighbour distances.

    The localizations are split into cells: ``bins`` quantiles of the bound times the
    distance bins of :data:`CROWDING_EDGES_NM`. In each cell the error's spread is the
    geometric mean of the half-width of its central 68.3 % and its rms (the errors have
    heavier tails than a Gaussian: the first alone would leave the rms above sigma, the
    second the fraction within sigma above 68 %), and the model's sigma^2 is fitted through
    the cells by non-negative least squares on relative residuals, weighted by the cell's
    count.
    """
    from scipy.optimize import nnls  # slow to import

    ok = np.isfinite(error_nm) & np.isfinite(crlb_nm)
    e, c, d = np.abs(error_nm[ok]), crlb_nm[ok], neighbour_nm[ok]
    if e.size < 20 * bins:
        raise ValueError(
            f"precision calibration needs at least {20 * bins} matched localizations, got {e.size}"
        )
    edges = np.quantile(c, np.linspace(0, 1, bins + 1))
    cb = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)
    db = np.searchsorted(np.asarray(CROWDING_EDGES_NM), d, side="right") - 1
    rows, rhs, weights = [], [], []
    for i in range(bins):
        for j in range(len(CROWDING_EDGES_NM) - 1):
            sel = (cb == i) & (db == j)
            if sel.sum() < 10:
                continue
            s2 = _spread2(e[sel])
            near = np.mean(np.exp(-((d[sel] / CROWDING_RADIUS_NM) ** 2)))
            rows.append([np.mean(c[sel] ** 2), 1.0, near])
            rhs.append(s2)
            weights.append(math.sqrt(sel.sum()) / max(s2, 1e-12))
    a = np.asarray(rows) * np.asarray(weights)[:, None]
    sol, _ = nnls(a, np.asarray(rhs) * np.asarray(weights))
    k2, f2, g2 = (float(v) for v in sol)
    return math.sqrt(k2), math.sqrt(f2), math.sqrt(g2)


def _spread2(err: np.ndarray) -> float:
    """Squared spread of one cell: the product of the error's central 68.3 % half-width
    and its rms, the geometric mean of what the two acceptance statistics ask sigma to be."""
    return float(np.quantile(err, 0.6827) * np.sqrt(np.mean(err**2)))


OUTLIER_SIGMAS = 5.0  # gross errors, reported apart: one moves a quintile's rms by ~40 %


def coverage_figures(error_nm: np.ndarray, sigma_nm: np.ndarray) -> dict[str, Any]:
    """Per axis: the fraction with |error| <= sigma, and per quintile of sigma the rms
    error over the rms sigma (the acceptance of issue 15: 0.68 +- 0.05, and within 25 %)."""
    out: dict[str, Any] = {}
    for a, name in enumerate(AXES):
        e, s = error_nm[:, a], sigma_nm[:, a]
        ok = np.isfinite(e) & np.isfinite(s)
        e, s = e[ok], s[ok]
        if e.size < 5:
            out[name] = {"n": int(e.size)}
            continue
        edges = np.quantile(s, np.linspace(0, 1, 6))
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 4)
        ratios = [
            float(np.sqrt(np.mean(e[which == i] ** 2)) / np.sqrt(np.mean(s[which == i] ** 2)))
            for i in range(5)
        ]
        gross = np.abs(e) > OUTLIER_SIGMAS * s
        clipped = [
            float(
                np.sqrt(np.mean(e[(which == i) & ~gross] ** 2))
                / np.sqrt(np.mean(s[(which == i) & ~gross] ** 2))
            )
            for i in range(5)
        ]
        out[name] = {
            "n": int(e.size),
            "fraction_within_1_sigma": float(np.mean(np.abs(e) <= s)),
            "rms_error_over_rms_sigma_by_quintile": ratios,
            "fraction_beyond_5_sigma": float(np.mean(gross)),
            "rms_error_over_rms_sigma_by_quintile_within_5_sigma": clipped,
            "rms_sigma_by_quintile_nm": [
                float(np.sqrt(np.mean(s[which == i] ** 2))) for i in range(5)
            ],
        }
    return out


def calibration_ok(figures: dict[str, Any]) -> bool:
    """True when every axis meets the acceptance of :func:`coverage_figures`."""
    for name in AXES:
        f = figures.get(name, {})
        if "fraction_within_1_sigma" not in f:
            return False
        if abs(f["fraction_within_1_sigma"] - 0.68) > 0.05:
            return False
        if any(abs(r - 1.0) > 0.25 for r in f["rms_error_over_rms_sigma_by_quintile"]):
            return False
    return True
