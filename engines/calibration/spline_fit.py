"""A cubic-spline PSF (:class:`~engines.spline_psf.SplinePSF`) from bead z-stacks.

Per plane (one ``(Z, H, W)`` stack, every slice the beads moved by ``z_step_nm``):

1. Background: the mean of the pixels far from every bead (twice the window half-width
   where the image allows), per slice, and its median over slices (not a fit offset,
   which would absorb the beads' wings).
2. Beads detected on the background-free maximum projection, isolated, sub-pixel centres
   from a Gaussian fit to each bead's sharpest slice; each bead's brightness from its
   summed signal over the stack.
3. Sub-pixel registration and averaging in one step: the spline coefficients of a slice
   solve the linear least-squares problem "every bead pixel = brightness x PSF(pixel centre
   - bead centre)" over all beads at once, on knots ``oversample`` times finer than the
   pixel (beads at different sub-pixel offsets fill in the finer grid), with a small
   curvature penalty for knots no bead constrains. Bead positions and brightness are the
   same in every slice, so one factorisation serves the whole stack. The centres are then
   refined against the fitted PSF and the PSF refitted.
4. Smoothing in z (Gaussian, ``smooth_z_nm``) where noise dominates (the wings), knot by
   knot by the share of noise in the value; the bright core is kept as measured.
5. Normalised to a unit pixel sum at the plane's focus. The focus is the bead z of maximum
   peak intensity (parabola through the peaks near the maximum), and the z axis is moved so
   that plane 0's voxel starts at z = 0 (CONVENTIONS.md): ``z = stack z - (focus_0 - dz/2)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, sparse

from engines.calibration.spots import X0, Y0, detect_spots, fit_gaussians
from engines.config import Geometry
from engines.errors import FormatError
from engines.spline_psf import SplinePSF, bspline_weights
from engines.vectorial import peak_focus

log = logging.getLogger(__name__)

KNOT_KERNEL = np.array([1.0, 4.0, 1.0]) / 6.0  # cubic B-spline at the knots


@dataclass(frozen=True)
class SplineFitSettings:
    roi_half_px: int = 9
    oversample: int = 2
    smooth_z_nm: float = 30.0
    curvature_penalty: float = 1e-3
    threshold_sigma: float = 8.0
    min_beads: int = 3
    refine_iterations: int = 2


@dataclass(frozen=True)
class PlaneBeads:
    """Beads of one plane: ``rois`` ``(B, Z, S, S)`` background-free windows, ``xy_px``
    ``(B, 2)`` sub-pixel centres in window pixels, ``brightness`` ``(B,)``,
    ``background`` ``(Z,)`` and ``noise_var`` ``(Z,)`` of the empty pixels."""

    rois: np.ndarray
    xy_px: np.ndarray
    brightness: np.ndarray
    background: np.ndarray
    noise_var: np.ndarray
    corners: np.ndarray


def stack_background(
    stack: np.ndarray, xy_px: np.ndarray, half_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(Z,)`` background and noise variance from the pixels far from every bead: per slice
    their mean and variance, the background then their median over slices (constant:
    defocused wings raise only some slices). "Far" is twice the window half-width where
    that leaves at least 2% of the image, else as far as does (down to the window)."""
    z, h, w = stack.shape
    rr, cc = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for radius in (2 * half_px, 3 * half_px // 2, half_px + 1):
        mask = np.ones((h, w), bool)
        for x, y in xy_px:
            mask &= np.maximum(np.abs(rr + 0.5 - y), np.abs(cc + 0.5 - x)) > radius
        if mask.sum() >= max(50, 0.02 * h * w):
            break
    if mask.sum() < 50:
        raise FormatError(
            f"only {mask.sum()} pixels lie outside the bead windows: the background needs "
            "empty areas; use fewer beads or a smaller --roi"
        )
    vals = stack[:, mask]
    mean = np.full(len(stack), float(np.median(vals.mean(axis=1))))
    return mean, vals.var(axis=1)


def collect_beads(stack: np.ndarray, cfg: SplineFitSettings) -> PlaneBeads:
    stack = np.asarray(stack, dtype=np.float64)
    half = cfg.roi_half_px
    proj = stack.max(axis=0)
    first = detect_spots(
        proj, threshold_sigma=cfg.threshold_sigma, roi_half_px=half, isolation_px=2.0 * half + 1
    )
    bg, var = stack_background(stack, first.xy_px, half)
    spots = detect_spots(
        (stack - bg[:, None, None]).max(axis=0),
        threshold_sigma=cfg.threshold_sigma,
        roi_half_px=half,
        isolation_px=2.0 * half + 1,
    )
    if len(spots) < cfg.min_beads:
        raise FormatError(
            f"found {len(spots)} isolated bead(s) above {cfg.threshold_sigma} sigma, need "
            f"at least {cfg.min_beads}"
        )
    rc = np.floor(spots.xy_px[:, ::-1]).astype(int) - half  # window corners (row, col)
    offs = np.arange(2 * half + 1)
    rows = rc[:, 0, None, None] + offs[None, :, None]
    cols = rc[:, 1, None, None] + offs[None, None, :]
    rois = stack[:, rows, cols] - bg[:, None, None, None]  # (Z, B, S, S)
    rois = rois.transpose(1, 0, 2, 3)
    # centres from a Gaussian fit to each bead's sharpest slice: a single in-focus image is
    # symmetric and compact (the max projection is not, and biases sub-pixel centres)
    sharpest = rois.max(axis=(2, 3)).argmax(axis=1)
    params, ok, _ = fit_gaussians(rois[np.arange(len(rois)), sharpest])
    xy = np.where(ok[:, None], params[:, [X0, Y0]] + 0.5, spots.xy_px - rc[:, ::-1])
    total = rois.sum(axis=(1, 2, 3))
    brightness = total / np.median(total)
    return PlaneBeads(rois, xy, brightness, bg, var, rc)


def knot_count(side: int, oversample: int) -> int:
    """Odd lateral knot count that holds every tap of a ``side`` px window (see
    :meth:`SplinePSF.windows`)."""
    g = oversample * (side + 1) + 7
    return g + 1 - g % 2


def design_matrix(
    xy_px: np.ndarray, brightness: np.ndarray, side: int, cfg: SplineFitSettings
) -> tuple[sparse.csr_matrix, int]:
    """Sparse ``(B * S * S, G * G)`` map from lateral spline coefficients to bead pixels."""
    s = cfg.oversample
    g = knot_count(side, s)
    centre = (g - 1) / 2
    pix = np.arange(side) + 0.5
    u = (pix[None, :] - xy_px[:, 0:1]) * s + centre  # (B, S) knot coordinate of columns
    v = (pix[None, :] - xy_px[:, 1:2]) * s + centre
    iu, iv = np.floor(u).astype(int), np.floor(v).astype(int)
    wu = bspline_weights(torch.as_tensor(u - iu)).numpy()  # (B, S, 4)
    wv = bspline_weights(torch.as_tensor(v - iv)).numpy()
    nb = len(xy_px)
    row = np.arange(nb * side * side).reshape(nb, side, side)
    taps = np.arange(4)
    # (B, S_row, S_col, 4_q, 4_p)
    cols = (iv[:, :, None, None, None] - 1 + taps[:, None]) * g + (
        iu[:, None, :, None, None] - 1 + taps[None, :]
    )
    vals = brightness[:, None, None, None, None] * wv[:, :, None, :, None] * wu[:, None, :, None, :]
    rows = np.broadcast_to(row[..., None, None], cols.shape)
    a = sparse.csr_matrix(
        (vals.ravel(), (rows.ravel(), cols.ravel())), shape=(nb * side * side, g * g)
    )
    return a, g


def curvature(g: int) -> np.ndarray:
    d = np.diff(np.eye(g), 2, axis=0)
    eye = np.eye(g)
    return np.kron(d.T @ d, eye) + np.kron(eye, d.T @ d)


def solve_coefficients(beads: PlaneBeads, cfg: SplineFitSettings) -> np.ndarray:
    """``(Z, G, G)`` lateral B-spline coefficients of every slice (unnormalised)."""
    side = beads.rois.shape[-1]
    a, g = design_matrix(beads.xy_px, beads.brightness, side, cfg)
    ata = (a.T @ a).toarray()
    lam = cfg.curvature_penalty * np.trace(ata) / ata.shape[0]
    # knots beyond the bead windows have no data: hold them at zero, not extrapolated
    d = np.abs(np.arange(g) - (g - 1) / 2) / cfg.oversample
    outside = (np.maximum(d[:, None], d[None, :]) > side / 2).ravel()
    normal = ata + lam * curvature(g) + np.diag(outside * 1e3 * np.trace(ata) / len(ata))
    y = beads.rois.transpose(0, 2, 3, 1).reshape(-1, beads.rois.shape[1])  # (B*S*S, Z)
    chol = np.linalg.cholesky(normal + 1e-9 * np.eye(len(normal)) * np.trace(ata) / len(normal))
    rhs = a.T @ y
    coef = np.linalg.solve(chol.T, np.linalg.solve(chol, rhs))
    return coef.T.reshape(-1, g, g)


def refine_centres(beads: PlaneBeads, coef: np.ndarray, cfg: SplineFitSettings) -> PlaneBeads:
    """One Gauss-Newton step per bead on (x, y, brightness) against the fitted PSF."""
    side = beads.rois.shape[-1]
    eps = 1e-3
    xy, br = beads.xy_px.copy(), beads.brightness.copy()
    flat = coef.reshape(coef.shape[0], -1).T  # (G*G, Z)
    for b in range(len(xy)):

        def model(x: float, y: float, k: int = b) -> np.ndarray:
            a, _ = design_matrix(np.array([[x, y]]), np.ones(1), side, cfg)
            return np.asarray(a @ flat).ravel()  # (S*S*Z,)

        m0 = model(*xy[b])
        jx = (model(xy[b, 0] + eps, xy[b, 1]) - m0) / eps
        jy = (model(xy[b, 0], xy[b, 1] + eps) - m0) / eps
        data = beads.rois[b].transpose(1, 2, 0).ravel()
        jac = np.stack([br[b] * jx, br[b] * jy, m0], axis=1)
        step, *_ = np.linalg.lstsq(jac, data - br[b] * m0, rcond=None)
        xy[b] += np.clip(step[:2], -0.5, 0.5)
        br[b] += step[2]
    br /= np.median(br)
    return PlaneBeads(beads.rois, xy, br, beads.background, beads.noise_var, beads.corners)


def knot_values(coef: np.ndarray) -> np.ndarray:
    """Values at the knots of lateral B-spline coefficients ``(..., G, G)``."""
    v = ndimage.convolve1d(coef, KNOT_KERNEL, axis=-1, mode="constant")
    return ndimage.convolve1d(v, KNOT_KERNEL, axis=-2, mode="constant")


def smooth_where_noisy(vals: np.ndarray, beads: PlaneBeads, sigma_slices: float) -> np.ndarray:
    """Blend ``(Z, G, G)`` knot values with their z-smoothed copy, knot by knot, by the
    share of noise in them: ``a = var / (var + value^2)`` with ``var`` the photon and
    background noise of a bead-averaged value. Bright cores stay as measured (smoothing
    would lower the in-focus peak), dim wings are smoothed."""
    if sigma_slices <= 0:
        return vals
    smooth = ndimage.gaussian_filter1d(vals, sigma_slices, axis=0, mode="nearest")
    n_beads = len(beads.xy_px)
    var = (beads.noise_var[:, None, None] + np.abs(smooth)) / n_beads
    a = var / (var + smooth**2 + 1e-30)
    return a * smooth + (1 - a) * vals


def _window_sum(
    vals: np.ndarray, z_nm: float, z_step_nm: float, px_nm: float, cfg: SplineFitSettings
) -> float:
    """Pixel sum of the rendered window of a molecule centred on a pixel at ``z_nm``."""
    one = SplinePSF.from_values(
        vals[None],
        z0_nm=0.0,
        z_step_nm=z_step_nm,
        px_nm=px_nm,
        oversample=cfg.oversample,
        roi_px=2 * cfg.roi_half_px + 1,
        dz_nm=1.0,
        focal_nm=np.zeros(1),
    )
    half = cfg.roi_half_px
    xy = torch.full((1,), (half + 0.5) * px_nm, dtype=torch.float64)
    win, _, _ = one.windows(0, xy, xy, torch.tensor([z_nm], dtype=torch.float64), exact=True)
    return float(win.sum())


@dataclass(frozen=True)
class SplineFit:
    spline: SplinePSF
    beads: list[PlaneBeads]
    focal_stack_nm: np.ndarray
    z_shift_nm: float


def fit_spline_psf(
    stacks: list[np.ndarray],
    *,
    z_step_nm: float,
    geometry: Geometry,
    cfg: SplineFitSettings | None = None,
    source: str = "",
) -> SplineFit:
    """Build the spline of every plane from one bead z-stack per plane."""
    cfg = cfg or SplineFitSettings()
    if len(stacks) != geometry.planes:
        raise FormatError(f"expected {geometry.planes} z-stacks (one per plane), got {len(stacks)}")
    depths = [np.shape(s)[0] if np.ndim(s) == 3 else -1 for s in stacks]
    if len(set(depths)) != 1 or depths[0] < 5:
        raise FormatError(
            "expected every z-stack as (Z, H, W) with the same Z >= 5 slices, got "
            f"shapes {[np.shape(s) for s in stacks]}"
        )
    if not z_step_nm > 0:
        raise FormatError(f"the spline needs a positive z step (upwards), got {z_step_nm} nm")
    s = cfg.oversample
    values, beads_all, focal = [], [], []
    z_stack = np.arange(np.shape(stacks[0])[0]) * z_step_nm
    for k, st in enumerate(stacks):
        try:
            beads = collect_beads(st, cfg)
        except FormatError as exc:
            raise FormatError(f"plane {k}: {exc}") from exc
        coef = solve_coefficients(beads, cfg)
        for _ in range(cfg.refine_iterations):
            beads = refine_centres(beads, coef, cfg)
            coef = solve_coefficients(beads, cfg)
        vals = knot_values(coef)
        if cfg.smooth_z_nm > 0:
            vals = ndimage.gaussian_filter1d(
                vals, cfg.smooth_z_nm / z_step_nm, axis=0, mode="nearest"
            )
        c = vals.shape[-1] // 2
        f = peak_focus(z_stack, vals[:, c, c])
        vals = vals / _window_sum(vals, f, z_step_nm, geometry.px_nm, cfg)
        log.info("plane %d: %d beads, focus at stack z %.1f nm", k, len(beads.xy_px), f)
        values.append(vals)
        beads_all.append(beads)
        focal.append(f)
    focal_stack = np.asarray(focal)
    if np.any(np.diff(focal_stack) <= 0):
        raise FormatError(
            f"plane foci {np.round(focal_stack).tolist()} nm (stack z) do not increase with "
            "the plane index: is the z step sign reversed, or the stacks not in plane order?"
        )
    shift = float(focal_stack[0] - geometry.dz_nm / 2)
    spline = SplinePSF.from_values(
        np.stack(values).astype(np.float32),
        z0_nm=float(z_stack[0] - shift),
        z_step_nm=float(z_step_nm),
        px_nm=geometry.px_nm,
        oversample=s,
        roi_px=2 * cfg.roi_half_px + 1,
        dz_nm=geometry.dz_nm,
        focal_nm=focal_stack - shift,
        meta={
            "source": source,
            "beads_per_plane": [len(b.xy_px) for b in beads_all],
            "background_per_plane": [float(np.mean(b.background)) for b in beads_all],
            "smooth_z_nm": cfg.smooth_z_nm,
            "curvature_penalty": cfg.curvature_penalty,
            "stack_to_sample_shift_nm": shift,
            "z_convention": "sample z; plane focus = bead z of maximum peak intensity; "
            "z = 0 at the lower edge of plane 0's voxel (focus_0 - dz / 2)",
        },
    )
    if not math.isfinite(float(spline.coeffs.sum())):
        raise FormatError("the spline fit diverged (non-finite coefficients)")
    return SplineFit(spline, beads_all, focal_stack, shift)
