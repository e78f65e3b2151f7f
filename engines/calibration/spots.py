"""Bead detection with sub-pixel precision: local maxima, then batched 2D Gaussian fits
(:mod:`engines.calibration.gaussfit`).

Pixel coordinates follow CONVENTIONS.md divided by the pixel size: ``x`` along columns,
``y`` along rows, the centre of pixel ``(row i, col j)`` at ``(x, y) = (j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from engines.calibration import gaussfit

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


def fit_gaussians(
    rois: np.ndarray, init: np.ndarray | None = None, *, iters: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit of ``amp * exp(-r^2 / 2 sigma^2) + offset`` to every window.

    The batched Levenberg-Marquardt of :mod:`engines.calibration.gaussfit`, in window
    pixel indices and this module's parameter columns.

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
    p = initial_guess(rois) if init is None else init.astype(np.float64)
    start = np.stack(
        [p[:, X0], p[:, Y0], np.log(np.abs(p[:, SIGMA]) + 1e-6), p[:, AMP], p[:, OFFSET]], 1
    )
    grid = np.broadcast_to(np.arange(s, dtype=np.float64), (n, s))
    _, _, theta = gaussfit.fit_gaussians(
        rois, grid, grid, init=start, sigma_range_px=(0.05, float(s)), iterations=iters
    )
    # this module's columns (AMP, X0, Y0, SIGMA, OFFSET) from gaussfit's
    out = theta[:, [gaussfit.AMP, gaussfit.X, gaussfit.Y, gaussfit.LOG_SIGMA, gaussfit.BG]]
    out[:, SIGMA] = np.exp(out[:, SIGMA])
    model = gaussfit.SeparableGaussian(theta, grid, grid, np.zeros((n, 2))).image
    rms = np.sqrt(((model - rois) ** 2).mean(axis=(1, 2)))
    ok = (
        np.isfinite(out).all(axis=1)
        & (out[:, AMP] > 0)
        & (out[:, SIGMA] >= 0.3)
        & (out[:, SIGMA] <= s / 2.0)
        & (out[:, X0] >= 0)
        & (out[:, X0] <= s - 1)
        & (out[:, Y0] >= 0)
        & (out[:, Y0] <= s - 1)
    )
    return out, ok, rms


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
        ok &= np.asarray(nearest)[:, 1] >= iso  # asarray: the stubs allow a scalar result
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
