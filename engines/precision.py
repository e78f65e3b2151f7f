"""A calibrated precision per localization: the Cramer-Rao bound scaled per model and axis.

The network's errors sit above the bound (about 3x at low density for the default model,
more at high density, where neighbours overlap), and by a factor that differs between x,
y and z. So the precision a model reports is

    sigma_a = sqrt((k_a * crlb_a)^2 + floor_a^2)        a in x, y, z,

with ``crlb_a`` the bound at the localization's own estimate
(:class:`engines.photometry.PhotometryFit`) and ``k_a``, ``floor_a`` fitted on frames
simulated from the model's own settings (:func:`fit_calibration`, run by
``voxloc evaluate --calibrate-precision``) and recorded in ``model.json`` under
``"precision"``. A model without that record reports NaN precision: an uncalibrated bound
would claim three times the accuracy the network has. docs/photometry.md argues the choice.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

AXES = ("x", "y", "z")
METHOD = "calibrated CRLB: sigma = sqrt((k * crlb)^2 + floor^2) per axis"


class PrecisionCalibration(BaseModel):
    """``model.json`` ``"precision"``: the fitted constants and how they were measured."""

    model_config = ConfigDict(frozen=True, extra="allow")

    method: str = METHOD
    k: tuple[float, float, float] = Field(description="CRLB multiplier of x, y, z")
    floor_nm: tuple[float, float, float] = Field(description="precision floor of x, y, z, nm")
    window_px: int = Field(ge=3, description="photometry window the CRLB was computed in")

    def apply(self, crlb_nm: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` calibrated one-sigma precision from ``(N, 3)`` bounds, nm."""
        k = torch.tensor(self.k, dtype=crlb_nm.dtype, device=crlb_nm.device)
        f = torch.tensor(self.floor_nm, dtype=crlb_nm.dtype, device=crlb_nm.device)
        return torch.sqrt((k * crlb_nm) ** 2 + f**2)


def fit_axis(error_nm: np.ndarray, crlb_nm: np.ndarray, *, bins: int = 10) -> tuple[float, float]:
    """``(k, floor)`` of one axis from matched errors and their bounds.

    The localizations are split into ``bins`` quantiles of the bound; in each, the error's
    spread is the geometric mean of the half-width of its central 68.3 % and its rms (the
    errors have heavier tails than a Gaussian: the first alone would leave the rms above
    sigma, the second the fraction within sigma above 68 %), and
    ``spread^2 = k^2 crlb^2 + floor^2`` is fitted through the bins by least squares, both
    constants >= 0.
    """
    ok = np.isfinite(error_nm) & np.isfinite(crlb_nm)
    e, c = np.abs(error_nm[ok]), crlb_nm[ok]
    if e.size < 5 * bins:
        raise ValueError(
            f"precision calibration needs at least {5 * bins} matched localizations, got {e.size}"
        )
    edges = np.quantile(c, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, bins - 1)
    c2 = np.array([np.mean(c[which == i] ** 2) for i in range(bins)])
    s2 = np.array([_spread2(e[which == i]) for i in range(bins)])
    k2, f2 = _nonneg_line(c2, s2)
    return math.sqrt(k2), math.sqrt(f2)


def _spread2(err: np.ndarray) -> float:
    """Squared spread of one bin: the product of the error's central 68.3 % half-width and
    its rms, the geometric mean of what the two acceptance statistics ask sigma to be."""
    return float(np.quantile(err, 0.6827) * np.sqrt(np.mean(err**2)))


def _nonneg_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = a x + b`` with ``a, b >= 0`` (relative residuals)."""
    w = 1.0 / np.maximum(y, 1e-12)
    best: tuple[float, float, float] | None = None
    for fixed in (None, "a0", "b0"):
        if fixed is None:
            A = np.stack([x * w, w], axis=1)
            sol = np.linalg.lstsq(A, y * w, rcond=None)[0]
            a, b = float(sol[0]), float(sol[1])
        elif fixed == "a0":
            a, b = 0.0, float(np.sum(y * w * w) / np.sum(w * w))
        else:
            a, b = float(np.sum(x * y * w * w) / np.sum((x * w) ** 2)), 0.0
        if a < 0 or b < 0:
            continue
        cost = float(np.sum(((a * x + b - y) * w) ** 2))
        if best is None or cost < best[2]:
            best = (a, b, cost)
    assert best is not None  # b0 with x, y > 0 always qualifies
    return best[0], best[1]


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
        out[name] = {
            "n": int(e.size),
            "fraction_within_1_sigma": float(np.mean(np.abs(e) <= s)),
            "rms_error_over_rms_sigma_by_quintile": ratios,
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
