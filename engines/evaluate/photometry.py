"""Photometry and precision of matched localizations on simulated frames (issue 15).

:class:`PhotometryStats` collects, per matched localization at the lowest threshold, the
estimated and true photons, the background, the position error, the engine's reported
precision and the raw Cramer-Rao bound at the estimate. Its :meth:`~PhotometryStats.to_dict`
gives the acceptance figures: the median ratio of estimated to true photons of isolated
molecules (no other molecule within the photometry window), the background against the
truth, and the precision coverage (:func:`engines.precision.coverage_figures`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engines.config import SimSettings
from engines.evaluate.matching import Matching
from engines.photometry import REFINE_ITERATIONS, Photometry, PhotometryFit
from engines.plane_shift import fit_shifts, joint_bound, shift_limits
from engines.precision import coverage_figures, nearest_neighbour_nm
from engines.psf_model import PSFModel, psf_model_for
from engines.types import Localizations


@dataclass
class PhotometryStats:
    """Matched localizations of one test set with their photometry (arrays per frame)."""

    settings: SimSettings
    window_px: int
    psf: PSFModel | None = None  # what the test frames were drawn from (None: the model's)
    cols: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def _add(self, **arrays: np.ndarray) -> None:
        for k, v in arrays.items():
            self.cols.setdefault(k, []).append(np.asarray(v))

    def add(
        self,
        loc: Localizations,
        match: Matching,
        truth_xyz_nm: np.ndarray,
        truth_weights: np.ndarray,
        crlb_nm: np.ndarray,
    ) -> None:
        """One frame: its localizations, their matching to the truth, and per localization
        the raw bound, the fit's chi2 and its Gauss-Newton step, ``(N, 7)``
        (:func:`raw_crlb`)."""
        p, t = match.pred_idx, match.true_idx
        px = self.settings.geometry.px_nm
        xy = truth_xyz_nm[:, :2] / px
        d = np.abs(xy[:, None, :] - xy[None, :, :]).max(axis=-1)
        np.fill_diagonal(d, np.inf)
        isolated = d.min(axis=1) > self.window_px if len(xy) > 1 else np.ones(len(xy), bool)
        self._add(
            photons=loc.photons[p],
            true_photons=true_photons(self.settings, truth_xyz_nm[t], truth_weights[t], self.psf),
            background=loc.background[p],
            error_nm=match.delta_nm,
            sigma_nm=loc.precision_nm[p],
            crlb_nm=crlb_nm[p, :3],
            neighbour_nm=_nearest(loc.xyz_nm)[p],
            chi2=crlb_nm[p, 3],
            step_nm=crlb_nm[p, 4:7],
            isolated=isolated[t],
        )

    def column(self, name: str, width: int = 0) -> np.ndarray:
        parts = self.cols.get(name, [])
        if not parts:
            return np.zeros((0, width) if width else 0)
        return np.concatenate(parts)

    def to_dict(self) -> dict[str, Any]:
        ratio = self.column("photons") / np.maximum(self.column("true_photons"), 1e-12)
        iso = self.column("isolated").astype(bool)
        bg = self.column("background")
        bg_true = true_background(self.settings)
        bg_iso = _median(bg[iso])
        out: dict[str, Any] = {
            "matched": int(ratio.size),
            "isolated": int(iso.sum()),
            "isolation_px": self.window_px,
            "photon_ratio_median_isolated": _median(ratio[iso]),
            "photon_ratio_p16_p84_isolated": _pct(ratio[iso]),
            "photon_ratio_median_all": _median(ratio),
            "background_true": bg_true,
            "background_median_isolated": bg_iso,
            "background_median_all": _median(bg),
            "background_ratio_median_isolated": (
                bg_iso / bg_true if bg_iso is not None and bg_true else None
            ),
        }
        sigma = self.column("sigma_nm", 3)
        err = self.column("error_nm", 3)
        if sigma.size and np.isfinite(sigma).any():
            out["precision"] = coverage_figures(err, sigma)
        crlb = self.column("crlb_nm", 3)
        if crlb.size:
            rms_err = np.sqrt(np.nanmean(err**2, axis=0))
            rms_crlb = np.sqrt(np.nanmean(crlb**2, axis=0))
            out["rms_error_over_rms_crlb"] = dict(
                zip("xyz", (rms_err / rms_crlb).tolist(), strict=True)
            )
        return out


def raw_crlb(
    fit: PhotometryFit, frames: torch.Tensor, locs: list[Localizations], *, shifts: bool = False
) -> list[np.ndarray]:
    """Per frame of ``frames``, ``(N, 7)``: the bound of x, y, z at every localization of
    ``locs``, the fit's chi2 and its Gauss-Newton step of x, y, z (nm), from the same fit
    the engine runs; ``shifts``: with each frame's plane shifts fitted again at these
    positions, as the refinement fits them (:mod:`engines.plane_shift`)."""
    idx = torch.cat([torch.full((len(loc),), b, dtype=torch.long) for b, loc in enumerate(locs)])
    xyz = torch.from_numpy(np.concatenate([loc.xyz_nm for loc in locs]).reshape(-1, 3))
    limits = shift_limits(fit.settings) if shifts else None
    with torch.inference_mode():
        if limits is None:
            ph = fit.measure(frames, idx, xyz, crlb=True)
        else:
            shift = refit_shifts(fit, frames, idx, xyz)
            ph = joint_bound(_measure_of(fit, frames, idx), xyz, shift, idx, prior_nm=limits[0])
    both = torch.cat([ph.crlb_nm, ph.chi2[:, None], ph.step_nm], dim=1).numpy()
    bounds = np.cumsum([0] + [len(loc) for loc in locs])
    return [both[bounds[i] : bounds[i + 1]] for i in range(len(locs))]


def refit_shifts(
    fit: PhotometryFit, frames: torch.Tensor, idx: torch.Tensor, xyz: torch.Tensor
) -> torch.Tensor:
    """``(frames, P, 2)`` each frame's plane shifts, fitted from 0 in as many steps as
    the refinement takes, at fixed positions (settings with a per-plane drift)."""
    limits = shift_limits(fit.settings)
    assert limits is not None
    prior, bound = limits
    shift = torch.zeros(frames.shape[0], frames.shape[1], 2, device=frames.device)
    measure = _measure_of(fit, frames, idx)
    for _ in range(REFINE_ITERATIONS):
        shift = fit_shifts(measure, xyz, shift, idx, prior_nm=prior, limit_nm=bound)
    return shift


def _measure_of(
    fit: PhotometryFit, frames: torch.Tensor, idx: torch.Tensor
) -> Callable[..., Photometry]:
    """The fit's photometry of ``frames`` with the bound, at given positions."""

    def measure(p: torch.Tensor, **kw: Any) -> Photometry:
        return fit.measure(frames, idx, p, crlb=True, **kw)

    return measure


def _nearest(xyz_nm: np.ndarray) -> np.ndarray:
    """Distance of each localization of one frame to its nearest other one, nm."""
    xy = torch.from_numpy(np.asarray(xyz_nm, np.float32)[:, :2])
    return nearest_neighbour_nm(torch.zeros(len(xy), dtype=torch.long), xy).numpy()


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def _pct(x: np.ndarray) -> list[float] | None:
    return [float(v) for v in np.percentile(x, [16, 84])] if x.size else None


def true_photons(
    settings: SimSettings,
    xyz_nm: np.ndarray,
    weights: np.ndarray,
    psf: PSFModel | None = None,
) -> np.ndarray:
    """``(N,)`` photons of simulated molecules: their noiseless PSF intensity (``psf``, by
    default the settings' own) summed over all pixels (in a window that holds the whole
    PSF) and planes, photons."""
    from engines.evaluate.crlb import window_px

    side = window_px(settings)
    px = settings.geometry.px_nm
    xyz = torch.as_tensor(np.asarray(xyz_nm), dtype=torch.float64).reshape(-1, 3)
    half = side // 2
    origin = torch.floor(xyz[:, :2] / px) - half
    rel = xyz.clone()
    rel[:, :2] -= origin * px
    psf = psf or psf_model_for(settings)
    n = xyz.shape[0]
    out = []
    for start in range(0, n, 256):
        sl = slice(start, start + 256)
        w = torch.as_tensor(np.asarray(weights)[sl], dtype=torch.float64)
        drift = torch.zeros(w.shape[0], settings.geometry.planes, 2, dtype=torch.float64)
        img = psf.render(rel[sl, None, :], w[:, None], drift, height=side, width=side)
        if img.shape[0] != w.shape[0]:  # renderers that return one frame per molecule
            raise ValueError(f"expected {w.shape[0]} rendered windows, got {img.shape[0]}")
        out.append(img.sum(dim=(1, 2, 3)))
    return torch.cat(out).numpy() if out else np.zeros(0)


def true_background(settings: SimSettings) -> float:
    """Background per pixel and plane of the settings' simulated frames, photons."""
    cam = settings.noise.to_camera()
    return (cam.expected_background(settings.psf.b) - cam.zero_level()) / cam.intensity_scale()
