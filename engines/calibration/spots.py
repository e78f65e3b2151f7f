"""Bead detection with sub-pixel precision: local maxima, then batched 2D Gaussian fits.

Pixel coordinates follow CONVENTIONS.md divided by the pixel size: ``x`` along columns,
``y`` along rows, the centre of pixel ``(row i, col j)`` at ``(x, y) = (j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

# columns of a Gaussian parameter array
AMP, X0, Y0, SIGMA, OFFSET = range(5)


@dataclass(frozen=True)
class Spots:
    """Beads found in one image.

    Attributes:
        xy_px: ``(N, 2)`` float64 sub-pixel centres (x, y), pixels.
        sigma_px: ``(N,)`` float64 Gaussian standard deviation, pixels.
        amplitude: ``(N,)`` float64 peak above the background, image units.
        background: ``(N,)`` float64 local background, image units.
    """

    xy_px: np.ndarray
    sigma_px: np.ndarray
    amplitude: np.ndarray
    background: np.ndarray

    def __len__(self) -> int:
        return int(self.xy_px.shape[0])


def robust_noise(image: np.ndarray) -> tuple[float, float]:
    """(median, MAD-based standard deviation) of an image, robust to sparse bright spots."""
    med = float(np.median(image))
    mad = float(np.median(np.abs(image - med)))
    return med, max(1.4826 * mad, 1e-9)


def local_maxima(
    image: np.ndarray, *, threshold_sigma: float, min_distance_px: int, border_px: int
) -> np.ndarray:
    """``(N, 2)`` int (row, col) of local maxima of the smoothed image above the threshold.

    Smoothing is a Gaussian of 1 px; the threshold is ``threshold_sigma`` robust standard
    deviations of the smoothed image above its median.
    """
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.0)
    med, sd = robust_noise(smooth)
    peaks = smooth == ndimage.maximum_filter(smooth, size=2 * min_distance_px + 1)
    peaks &= smooth > med + threshold_sigma * sd
    h, w = image.shape
    b = border_px
    peaks[:b, :] = peaks[h - b :, :] = False
    peaks[:, :b] = peaks[:, w - b :] = False
    return np.argwhere(peaks)


def extract_rois(image: np.ndarray, rc: np.ndarray, half_px: int) -> np.ndarray:
    """``(N, S, S)`` float64 windows of side ``S = 2 * half_px + 1`` centred on ``rc``."""
    offs = np.arange(-half_px, half_px + 1)
    rows = rc[:, 0, None, None] + offs[None, :, None]
    cols = rc[:, 1, None, None] + offs[None, None, :]
    return image[rows, cols].astype(np.float64)


def initial_guess(rois: np.ndarray) -> np.ndarray:
    """``(N, 5)`` starting parameters from background-subtracted moments."""
    n, s, _ = rois.shape
    edge = np.concatenate([rois[:, 0], rois[:, -1], rois[:, 1:-1, 0], rois[:, 1:-1, -1]], axis=1)
    off = np.median(edge, axis=1)
    sig = np.clip(rois - off[:, None, None], 0.0, None)
    tot = sig.sum(axis=(1, 2)) + 1e-12
    grid = np.arange(s, dtype=np.float64)
    x0 = (sig.sum(axis=1) * grid).sum(axis=1) / tot
    y0 = (sig.sum(axis=2) * grid).sum(axis=1) / tot
    r2 = (grid[None, None, :] - x0[:, None, None]) ** 2 + (
        grid[None, :, None] - y0[:, None, None]
    ) ** 2
    var = (sig * r2).sum(axis=(1, 2)) / tot / 2.0
    sigma = np.clip(np.sqrt(var), 0.5, s / 3.0)
    amp = np.maximum(rois.max(axis=(1, 2)) - off, 1e-6)
    out = np.empty((n, 5))
    out[:, AMP], out[:, X0], out[:, Y0], out[:, SIGMA], out[:, OFFSET] = amp, x0, y0, sigma, off
    return out


def _model_and_jac(p: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(s, dtype=np.float64)
    dx = grid[None, None, :] - p[:, X0, None, None]
    dy = grid[None, :, None] - p[:, Y0, None, None]
    s2 = p[:, SIGMA, None, None] ** 2
    r2 = dx**2 + dy**2
    e = np.exp(-r2 / (2.0 * s2))
    a = p[:, AMP, None, None]
    model = a * e + p[:, OFFSET, None, None]
    jac = np.stack(
        [
            e,
            a * e * dx / s2,
            a * e * dy / s2,
            a * e * r2 / (s2 * p[:, SIGMA, None, None]),
            np.ones_like(e),
        ],
        axis=-1,
    )
    return model.reshape(len(p), -1), jac.reshape(len(p), -1, 5)


def fit_gaussians(
    rois: np.ndarray, init: np.ndarray | None = None, *, iters: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of ``amp * exp(-r^2 / 2 sigma^2) + offset`` to every window.

    A batched Levenberg-Marquardt: every window has its own damping, all iterate together.

    Args:
        rois: ``(N, S, S)`` windows.
        init: ``(N, 5)`` start (amp, x0, y0, sigma, offset) in window pixel indices
            (the centre of window pixel ``[i, j]`` is at ``(x0, y0) = (j, i)``).

    Returns:
        ``(params (N, 5), ok (N,) bool, rms (N,))``; ``ok`` is False when a fit ran off the
        window, to a non-positive amplitude or to a width outside ``[0.3, S / 2]`` px;
        ``rms`` is the root-mean-square fit residual, image units.
    """
    n, s, _ = rois.shape
    p = initial_guess(rois) if init is None else init.astype(np.float64).copy()
    data = rois.reshape(n, -1)
    lam = np.full(n, 1e-3)
    model, jac = _model_and_jac(p, s)
    cost = ((model - data) ** 2).sum(axis=1)
    for _ in range(iters):
        jac_t = jac.transpose(0, 2, 1)
        jtj = jac_t @ jac
        jtr = (jac_t @ (data - model)[..., None])[..., 0]
        diag = np.diagonal(jtj, axis1=1, axis2=2)
        reg = lam[:, None] * diag + 1e-9 * diag.max(axis=1, keepdims=True) + 1e-12
        damped = jtj + reg[:, :, None] * np.eye(5)
        step = np.linalg.solve(damped, jtr[..., None])[..., 0]
        trial = p + step
        trial[:, SIGMA] = np.abs(trial[:, SIGMA]) + 1e-6
        t_model, t_jac = _model_and_jac(trial, s)
        t_cost = ((t_model - data) ** 2).sum(axis=1)
        better = np.isfinite(t_cost) & (t_cost < cost)
        p[better], model[better], jac[better], cost[better] = (
            trial[better],
            t_model[better],
            t_jac[better],
            t_cost[better],
        )
        lam = np.where(better, lam / 3.0, lam * 4.0)
    ok = (
        np.isfinite(p).all(axis=1)
        & (p[:, AMP] > 0)
        & (p[:, SIGMA] >= 0.3)
        & (p[:, SIGMA] <= s / 2.0)
        & (p[:, X0] >= 0)
        & (p[:, X0] <= s - 1)
        & (p[:, Y0] >= 0)
        & (p[:, Y0] <= s - 1)
    )
    return p, ok, np.sqrt(cost / data.shape[1])


def detect_spots(
    image: np.ndarray,
    *,
    threshold_sigma: float = 8.0,
    min_distance_px: int = 3,
    roi_half_px: int = 5,
    isolation_px: float | None = None,
) -> Spots:
    """Isolated beads in a 2D image, sub-pixel (Gaussian fit in a ``2 * roi_half_px + 1`` window).

    Beads with another maximum closer than ``isolation_px`` (default ``roi_half_px + 1``),
    and fits wider or worse than the image's typical bead (merged beads) are dropped:
    their centres would be biased.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    rc = local_maxima(
        image,
        threshold_sigma=threshold_sigma,
        min_distance_px=min_distance_px,
        border_px=roi_half_px,
    )
    if len(rc) == 0:
        return Spots(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0))
    params, ok, rms = fit_gaussians(extract_rois(image, rc, roi_half_px))
    # a fit that wandered off its maximum belongs to a neighbour or to noise
    ok &= np.hypot(params[:, X0] - roi_half_px, params[:, Y0] - roi_half_px) < 1.5
    if len(rc) > 1:
        iso = roi_half_px + 1.0 if isolation_px is None else isolation_px
        nearest, _ = cKDTree(rc).query(rc, k=2)
        ok &= nearest[:, 1] >= iso
    if ok.sum() >= 3:
        # merged pairs fit a round Gaussian badly and wide; isolated beads all look alike
        rel = rms / np.maximum(params[:, AMP], 1e-12)
        ok &= params[:, SIGMA] <= 1.2 * np.median(params[ok, SIGMA])
        ok &= rel <= 3.0 * np.median(rel[ok])
    params, rc = params[ok], rc[ok]
    xy = np.stack(
        [
            rc[:, 1] - roi_half_px + params[:, X0] + 0.5,
            rc[:, 0] - roi_half_px + params[:, Y0] + 0.5,
        ],
        axis=1,
    )
    return Spots(xy, params[:, SIGMA], params[:, AMP], params[:, OFFSET])
