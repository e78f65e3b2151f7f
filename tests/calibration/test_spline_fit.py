"""Spline PSF from bead z-stacks (issue 12 acceptance): Gaussian beads reproduce the
analytic Gaussian, vectorial beads reproduce held-out beads within their noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.calibration.beads import simulate_bead_zstacks
from engines.calibration.spline_fit import SplineFitSettings, fit_spline_psf
from engines.config import Geometry, SimSettings
from engines.psf import render_planes
from engines.psf_model import SplineModel

GEOM = Geometry(planes=2, height=96, width=96)  # 16 beads per plane
SETTINGS = SimSettings(geometry=GEOM)
Z_RANGE = (-200.0, 1000.0)
CFG = SplineFitSettings(roi_half_px=7)
BG = 10.0  # paper noise: Poisson(10) + N(0, 9) on every pixel
NOISE_VAR = 19.0


def bead_positions(seed: int, geom: Geometry, spacing_px: int = 24) -> np.ndarray:
    """The jittered bead grid simulate_bead_zstacks draws for plane 0 with ``seed``."""
    rng = np.random.default_rng(seed)
    half = spacing_px // 2
    cols = np.arange(half, geom.width - half + 1, spacing_px)
    rows = np.arange(half, geom.height - half + 1, spacing_px)
    grid = np.stack(np.meshgrid(cols, rows), -1).reshape(-1, 2).astype(np.float64)
    return grid + rng.uniform(-2.0, 2.0, grid.shape)


def render(model, xy_px: np.ndarray, z_nm: np.ndarray, geom: Geometry) -> np.ndarray:
    xyz = np.concatenate(
        [
            np.broadcast_to(xy_px * geom.px_nm, (len(z_nm), len(xy_px), 2)),
            np.broadcast_to(z_nm[:, None, None], (len(z_nm), len(xy_px), 1)),
        ],
        axis=2,
    )
    xyz_t = torch.tensor(xyz, dtype=torch.float32)
    w = torch.ones(len(z_nm), len(xy_px))
    drift = torch.zeros(len(z_nm), geom.planes, 2)
    return model.render(xyz_t, w, drift, height=geom.height, width=geom.width).numpy()


def test_spline_from_gaussian_beads_reproduces_the_gaussian_within_1_percent():
    zs = simulate_bead_zstacks(SETTINGS, z_step_nm=20.0, z_range_nm=Z_RANGE, seed=5)
    fit = fit_spline_psf(zs.stacks, z_step_nm=20.0, geometry=GEOM, cfg=CFG)
    np.testing.assert_allclose(fit.spline.focal_nm, SETTINGS.focal_planes_nm(), atol=5.0)
    model = SplineModel(fit.spline, SETTINGS)
    gen = torch.Generator().manual_seed(2)
    n = 300
    u = torch.rand(n, 1, 3, generator=gen)
    xyz = torch.cat([(20 + 4 * u[..., :2]) * GEOM.px_nm, u[..., 2:] * GEOM.depth_nm], -1)
    w, drift = torch.ones(n, 1), torch.zeros(n, 2, 2)
    got = model.render(xyz, w, drift, height=48, width=48)
    focal = torch.tensor(SETTINGS.focal_planes_nm())
    ref = render_planes(xyz, w, drift, focal, px_nm=192.0, height=48, width=48, psf=SETTINGS.psf)
    peak = SETTINGS.psf.a_prime / (2 * math.pi * SETTINGS.psf.r0_nm**2)
    assert float((got - ref).abs().max()) < 0.01 * peak


@pytest.fixture(scope="module")
def vectorial():
    pytest.importorskip("psfmodels")
    from engines.vectorial import VectorialOptics, VectorialPSF

    optics = VectorialOptics(radius_nm=1600.0, z_step_nm=40.0)
    return VectorialPSF(SETTINGS, optics, z_range_nm=Z_RANGE)


def test_spline_from_vectorial_beads_reproduces_held_out_beads_within_noise(vectorial):
    kw = {"z_step_nm": 40.0, "z_range_nm": Z_RANGE, "brightness": 3.0, "psf": vectorial}
    fit_set = simulate_bead_zstacks(SETTINGS, seed=1, **kw)
    held_out = simulate_bead_zstacks(SETTINGS, seed=2, **kw)
    fit = fit_spline_psf(fit_set.stacks, z_step_nm=40.0, geometry=GEOM, cfg=CFG)
    # the planes' foci are where the vectorial microscope puts them: (k + 0.5) * dz
    np.testing.assert_allclose(fit.spline.focal_nm, SETTINGS.focal_planes_nm(), atol=10.0)
    clean = render(SplineModel(fit.spline, SETTINGS), bead_positions(2, GEOM), held_out.z_nm, GEOM)
    data = held_out.stacks[0] - BG
    model = clean[:, 0]
    scale = float((model * data).sum() / (model * model).sum())  # the beads' brightness
    resid = data - scale * model
    beads = model.max(axis=0) > 0.01 * model.max()
    chi2 = float((resid[:, beads] ** 2).mean() / NOISE_VAR)
    # 16 fit beads leave ~1/16 of the noise in the spline itself
    assert chi2 < 1.25, chi2
