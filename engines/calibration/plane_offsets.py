"""Residual lateral offset of each plane to the reference plane, measured in registered frames.

Every camera image is registered into the reference plane before inference, so a molecule
should sit at the same lateral position in all planes. A residual misregistration
``d_k`` of plane ``k`` (the paper's Fig. 7b bias) moves every molecule's image in that
plane by ``d_k``. It is measured directly in the registered frames, at the positions of
the published localizations (any sample: single emitters suffice, no structure needed):

* for each isolated localization, cut a small patch around it in every plane and fit a
  symmetric 2D Gaussian on a flat background (:mod:`engines.calibration.gaussfit`,
  all patches at once, the registration's bilinear resampling included).
  The PSF is radially symmetric in every plane, so defocus changes its width, never its
  centre; the fit's covariance gives each centre's variance;
* molecule ``i`` seen in plane ``k`` at ``c_ik = m_i + d_k + noise``. The unknown true
  position ``m_i`` drops out (the localization only seeds the fit; its error does not
  matter), and ``d_1..d_{P-1}`` (``d_0 = 0``) follow from weighted least squares over all
  molecules of a sliding window, with Huber weights against neighbours and bad fits.
  Defocused planes have large variances and weigh little, so each molecule ties together
  the planes near its depth and the chain of planes closes through them.

Offsets are in nm, positive when the molecules appear displaced towards +x/+y in that
plane compared with plane 0 (the simulator's ``drift_nm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engines.calibration.gaussfit import AMP, LOG_SIGMA, fit_gaussians


def isolated(xy_px: np.ndarray, isolation_px: float) -> np.ndarray:
    """``(N,)`` bool: no other position within ``isolation_px``."""
    n = len(xy_px)
    if isolation_px <= 0 or n < 2:
        return np.ones(n, bool)
    if n <= 256:  # all pairs: cheaper than building a tree for one frame's localizations
        d2 = ((xy_px[:, None, :] - xy_px[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        return d2.min(1) > isolation_px**2
    keep = np.ones(n, bool)
    from scipy.spatial import cKDTree  # here: the service settings import this module

    keep[cKDTree(xy_px).query_pairs(isolation_px, output_type="ndarray").ravel()] = False
    return keep


@dataclass(frozen=True)
class Patches:
    """Patches around isolated localizations, cut from every plane of one or more sets.

    Attributes:
        pixels: ``(M, P, S, S)`` float32, model units.
        gx, gy: ``(M, S)`` float64 pixel-centre x of the columns / y of the rows, pixels,
            relative to each localization.
        frac: ``(M, P, 2)`` float64 bilinear resampling fractions (x, y) each plane's
            registration used around the patch (0: not resampled).
    """

    pixels: np.ndarray
    gx: np.ndarray
    gy: np.ndarray
    frac: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    @staticmethod
    def concat(parts: list[Patches]) -> Patches:
        return Patches(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("pixels", "gx", "gy", "frac")
            )
        )


def bilinear_fractions(affines: np.ndarray | None, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``(M, P, 2)`` sub-pixel fractions at which the registration (service/registration.py:
    camera sampled bilinearly at ``A^-1`` of each reference pixel centre) resampled
    reference pixels ``(row, col)`` of each plane; ``affines`` ``(P, 2, 3)``, None or an
    identity: not resampled (0). The fraction of the patch's centre pixel stands for the
    whole patch (rotations and scales of a registration are small)."""
    if affines is None:
        return np.zeros((len(col), 1, 2))
    a = np.asarray(affines, np.float64)
    rx = (col + 0.5)[:, None] - a[None, :, 0, 2]  # (M, P)
    ry = (row + 0.5)[:, None] - a[None, :, 1, 2]
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    cam_x = (a[:, 1, 1] * rx - a[:, 0, 1] * ry) / det - 0.5  # camera pixel index
    cam_y = (a[:, 0, 0] * ry - a[:, 1, 0] * rx) / det - 0.5
    frac = np.stack([cam_x - np.floor(cam_x), cam_y - np.floor(cam_y)], -1)
    frac[:, np.all(a == np.eye(2, 3), axis=(1, 2))] = 0.0
    return frac


@runtime_checkable
class PatchSource(Protocol):
    """Frames that resample only the regions asked for (e.g. raw camera planes and their
    registration): ``shape`` ``(P, H, W)``; ``patches(rows, cols)`` the registered
    ``(P, M, S, S)`` float32 values at reference rows ``(M, S)`` x columns ``(M, S)``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def patches(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...


def cut_patches(
    frames: np.ndarray | PatchSource,
    xy_nm: np.ndarray,
    *,
    px_nm: float,
    patch_px: int = 9,
    isolation_px: float = 4.0,
    max_locs: int | None = None,
    affines: np.ndarray | None = None,
) -> Patches:
    """Patches of every plane around the isolated localizations ``xy_nm`` ``(N, 2)``.

    ``frames`` ``(P, H, W)`` are registered frames (or a :class:`PatchSource`); pixel
    ``(i, j)`` has its centre at ``((j + 0.5) px_nm, (i + 0.5) px_nm)``; ``affines``
    ``(P, 2, 3)`` the registration they went through (None: none). Localizations with a
    neighbour closer than ``isolation_px`` or whose patch leaves the frame are skipped; at
    most ``max_locs``.
    """
    _, h, w = frames.shape
    half = patch_px // 2
    xy_px = np.asarray(xy_nm, np.float64).reshape(-1, 2) / px_nm
    xy_px = xy_px[isolated(xy_px, isolation_px)]
    col = np.floor(xy_px[:, 0]).astype(np.int64)
    row = np.floor(xy_px[:, 1]).astype(np.int64)
    inside = (col >= half) & (col < w - half) & (row >= half) & (row < h - half)
    if max_locs is not None:
        inside &= np.cumsum(inside) <= max_locs
    off = np.arange(-half, half + 1)
    cols = col[inside, None] + off
    rows = row[inside, None] + off
    if isinstance(frames, PatchSource):
        pixels = frames.patches(rows, cols)
    else:
        pixels = frames[:, rows[:, :, None], cols[:, None, :]]  # (P, M, S, S)
    frac = bilinear_fractions(affines, col[inside], row[inside])
    return Patches(
        np.ascontiguousarray(np.moveaxis(pixels, 0, 1), dtype=np.float32),
        cols + 0.5 - xy_px[inside, :1],
        rows + 0.5 - xy_px[inside, 1:],
        np.broadcast_to(frac, (len(cols), frames.shape[0], 2)).copy(),
    )


@dataclass(frozen=True)
class PlaneMeasurements:
    """Per-plane fitted centres of isolated localizations of one or more frame sets.

    Attributes:
        rel_nm: ``(N, P, 2)`` float64 fitted centre minus the localization, nm
            (NaN where the fit was rejected).
        var_nm2: ``(N, P)`` float64 variance of each centre (mean of x and y), nm^2;
            ``inf`` where rejected.
    """

    rel_nm: np.ndarray
    var_nm2: np.ndarray

    def __len__(self) -> int:
        return len(self.rel_nm)

    @staticmethod
    def concat(parts: list[PlaneMeasurements], planes: int) -> PlaneMeasurements:
        if not parts:
            return PlaneMeasurements(np.zeros((0, planes, 2)), np.zeros((0, planes)))
        return PlaneMeasurements(
            np.concatenate([p.rel_nm for p in parts]), np.concatenate([p.var_nm2 for p in parts])
        )


def fit_planes(patches: Patches, *, px_nm: float, max_shift_px: float = 2.0) -> PlaneMeasurements:
    """Fit every plane of every patch; reject fits that failed, wandered off or are vague."""
    n, planes, s, _ = patches.pixels.shape
    if n == 0:
        return PlaneMeasurements(np.zeros((0, planes, 2)), np.zeros((0, planes)))
    gx = np.repeat(patches.gx, planes, axis=0)
    gy = np.repeat(patches.gy, planes, axis=0)
    centre, var, theta = fit_gaussians(
        patches.pixels.reshape(n * planes, s, s).astype(np.float64),
        gx,
        gy,
        patches.frac.reshape(n * planes, 2),
    )
    sigma = np.exp(theta[:, LOG_SIGMA])
    ok = (
        np.isfinite(var).all(1)
        & (theta[:, AMP] > 0)
        & (sigma > 0.35)
        & (sigma < 5.5)
        & (np.abs(centre) < max_shift_px).all(1)
        & (var.max(1) < max_shift_px**2)
    )
    rel = np.where(ok[:, None], centre * px_nm, np.nan).reshape(n, planes, 2)
    var_nm2 = np.where(ok, var.mean(1) * px_nm**2, np.inf).reshape(n, planes)
    return PlaneMeasurements(rel, var_nm2)


def measure_planes(
    frames: np.ndarray,
    xy_nm: np.ndarray,
    *,
    px_nm: float,
    patch_px: int = 9,
    isolation_px: float = 4.0,
    max_shift_px: float = 2.0,
    affines: np.ndarray | None = None,
) -> PlaneMeasurements:
    """:func:`cut_patches` then :func:`fit_planes` for one ``(P, H, W)`` frame set."""
    patches = cut_patches(
        np.asarray(frames),
        xy_nm,
        px_nm=px_nm,
        patch_px=patch_px,
        isolation_px=isolation_px,
        affines=affines,
    )
    return fit_planes(patches, px_nm=px_nm, max_shift_px=max_shift_px)


@dataclass(frozen=True)
class OffsetEstimate:
    """Attributes:
    offsets_nm: ``(P, 2)`` (x, y) offset of each plane to plane 0, nm (row 0 is 0).
    se_nm: ``(P, 2)`` standard errors, nm.
    locs: ``(P,)`` localizations whose fit in that plane entered the estimate.
    molecules: localizations in the window.
    """

    offsets_nm: np.ndarray
    se_nm: np.ndarray
    locs: np.ndarray
    molecules: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "planes": [
                {
                    "plane": k,
                    "x_nm": _num(self.offsets_nm[k, 0]),
                    "y_nm": _num(self.offsets_nm[k, 1]),
                    "se_x_nm": _num(self.se_nm[k, 0]),
                    "se_y_nm": _num(self.se_nm[k, 1]),
                    "locs": int(self.locs[k]),
                }
                for k in range(len(self.offsets_nm))
            ]
        }


def _num(v: float) -> float | None:
    return round(float(v), 2) if np.isfinite(v) else None


def _weighted_solve(c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``d`` ``(P, 2)`` minimising ``sum w_ik |c_ik - m_i - d_k|^2`` with ``d_0 = 0``."""
    planes = w.shape[1]
    s = w.sum(1)
    a = np.diag(w.sum(0)) - (w / s[:, None]).T @ w
    wc = w[..., None] * c
    rhs = wc.sum(0) - (w / s[:, None]).T @ wc.sum(1)
    d = np.zeros((planes, 2))
    d[1:] = np.linalg.lstsq(a[1:, 1:], rhs[1:], rcond=None)[0]
    return d


def solve_offsets(
    meas: PlaneMeasurements, *, huber: float = 2.5, iterations: int = 4
) -> OffsetEstimate:
    """Plane offsets from the measurements of many localizations (robust weighted LS)."""
    n, planes = meas.var_nm2.shape
    valid = np.isfinite(meas.var_nm2) & (meas.var_nm2 > 0)
    use = valid.sum(1) >= 2  # a molecule ties planes only if seen twice
    c = np.where(valid[use, :, None], meas.rel_nm[use], 0.0)
    w0 = np.where(valid[use], 1.0 / np.where(valid[use], meas.var_nm2[use], 1.0), 0.0)
    nan = np.full((planes, 2), np.nan)
    if use.sum() < 3 or not (w0 > 0).any(0).all():
        return OffsetEstimate(nan, nan, (w0 > 0).sum(0), int(n))
    w = w0
    for _ in range(iterations):
        d = _weighted_solve(c, w)
        m = ((w[..., None] * (c - d)).sum(1)) / w.sum(1)[:, None]
        z = np.sqrt(w0 * ((c - m[:, None] - d) ** 2).sum(-1) / 2.0)  # per measurement
        scale = 1.4826 * np.median(z[w0 > 0])
        h = np.minimum(1.0, huber * scale / np.maximum(z, 1e-12))
        w = w0 * h
    d = _weighted_solve(c, w)
    m = ((w[..., None] * (c - d)).sum(1)) / w.sum(1)[:, None]
    se = _standard_errors(c - m[:, None] - d, w)
    return OffsetEstimate(d, se, (w0 > 0).sum(0), int(n))


def _standard_errors(resid: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Standard errors of ``d`` from the normal matrix scaled by the residual variance."""
    planes = w.shape[1]
    s = w.sum(1)
    a = np.diag(w.sum(0)) - (w / s[:, None]).T @ w
    dof = max(int((w > 0).sum()) - len(w) - (planes - 1), 1)
    chi2 = (w[..., None] * resid**2).sum((0, 1)) / dof  # (2,) per axis
    se = np.zeros((planes, 2))
    cov = np.linalg.pinv(a[1:, 1:])
    se[1:] = np.sqrt(np.outer(np.diag(cov), chi2))
    return se
