"""Spline PSF (issue 12): rendering exactness, Gaussian equivalence, CRLB, file format."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.config import Geometry, SimSettings
from engines.errors import FormatError
from engines.evaluate.crlb import bound_from_theta, random_molecules
from engines.psf import render_planes, width_nm
from engines.psf_model import SplineModel, psf_model_for, spline_ref
from engines.simulator import Simulator
from engines.spline_psf import SplinePSF

GEOM = Geometry(planes=2, height=32, width=32)
SETTINGS = SimSettings(geometry=GEOM)


def gaussian_spline(settings: SimSettings, *, roi_px: int, oversample: int = 2, z_step=20.0):
    """The paper's Gaussian sampled on spline knots (unit pixel sum at focus)."""
    g = settings.geometry
    focal = np.asarray(settings.focal_planes_nm())
    knots = oversample * (roi_px + 1) + 7
    knots += 1 - knots % 2
    h = g.px_nm / oversample
    d = (np.arange(knots) - (knots - 1) / 2) * h
    z = np.arange(-200.0, g.depth_nm + 200.0 + 1e-6, z_step)
    vals = []
    for f in focal:
        r = width_nm(torch.tensor(f - z, dtype=torch.float64), settings.psf).numpy()
        amp = 1.0 / (2 * math.pi * r**2)
        img = amp[:, None, None] * np.exp(
            -(d[None, :, None] ** 2 + d[None, None, :] ** 2) / (2 * r[:, None, None] ** 2)
        )
        vals.append(img * g.px_nm**2)  # lattice sum ~ 1 at every z
    return SplinePSF.from_values(
        np.stack(vals),
        z0_nm=float(z[0]),
        z_step_nm=z_step,
        px_nm=g.px_nm,
        oversample=oversample,
        roi_px=roi_px,
        dz_nm=g.dz_nm,
        focal_nm=focal,
    )


@pytest.fixture(scope="module")
def spline_settings(tmp_path_factory):
    spline = gaussian_spline(SETTINGS, roi_px=25)
    path = spline.save(tmp_path_factory.mktemp("spline") / "gauss.npz")
    psf = SETTINGS.psf.model_copy(update={"spline": spline_ref(path)})
    return SETTINGS.model_copy(update={"psf": psf})


def test_gaussian_spline_renders_the_analytic_gaussian_within_1_percent(spline_settings):
    gen = torch.Generator().manual_seed(1)
    xyz = torch.rand(200, 1, 3, generator=gen, dtype=torch.float64)
    xyz = xyz * torch.tensor([4 * 192.0, 4 * 192.0, GEOM.depth_nm]) + 14 * 192.0
    xyz[..., 2] -= 14 * 192.0
    w = torch.ones(200, 1, dtype=torch.float64)
    drift = torch.zeros(200, 2, 2, dtype=torch.float64)
    focal = torch.tensor(SETTINGS.focal_planes_nm(), dtype=torch.float64)
    ref = render_planes(xyz, w, drift, focal, px_nm=192.0, height=32, width=32, psf=SETTINGS.psf)
    model = psf_model_for(spline_settings)
    got = model.render(xyz, w, drift, height=32, width=32)
    peak = SETTINGS.psf.a_prime / (2 * math.pi * SETTINGS.psf.r0_nm**2)
    assert float((got - ref).abs().max()) < 0.01 * peak


def test_centroids_at_sub_pixel_offsets_within_1_nm(spline_settings):
    model = psf_model_for(spline_settings)
    offs = torch.linspace(0.0, 0.95, 20, dtype=torch.float64)
    x = (16 + offs) * 192.0
    y = (15 + offs.flip(0)) * 192.0
    z = torch.full_like(x, 200.0)
    xyz = torch.stack([x, y, z], -1)[:, None]
    img = model.render(
        xyz,
        torch.ones(20, 1, dtype=torch.float64),
        torch.zeros(20, 2, 2, dtype=torch.float64),
        height=40,
        width=40,
    )[:, 0]
    centres = (torch.arange(40, dtype=torch.float64) + 0.5) * 192.0
    tot = img.sum((1, 2))
    cx = (img.sum(1) * centres).sum(1) / tot
    cy = (img.sum(2) * centres).sum(1) / tot
    assert float((cx - x).abs().max()) < 1.0
    assert float((cy - y).abs().max()) < 1.0


def test_spline_crlb_equals_gaussian_crlb_within_2_percent(spline_settings):
    theta = random_molecules(SETTINGS, 200, seed=4, window=25)
    gauss = bound_from_theta(theta, SETTINGS, window=25)
    spline = bound_from_theta(theta, spline_settings)
    for attr in ("x_nm", "y_nm", "z_nm"):
        a, b = getattr(gauss, attr), getattr(spline, attr)
        assert abs(b / a - 1) < 0.02, (attr, a, b)


def test_simulator_draws_from_the_spline_and_the_gaussian_path_is_unchanged(spline_settings):
    a = Simulator(SETTINGS, seed=3).sample(2, 10)
    b = Simulator(SETTINGS, seed=3).sample(2, 10)
    assert torch.equal(a.frames, b.frames)
    s = Simulator(spline_settings, seed=3).sample(2, 10)
    assert torch.equal(s.xyz_nm, a.xyz_nm)  # same draws, other PSF
    assert (s.frames - a.frames).abs().max() < 0.05 * 450


def test_file_round_trip_and_hash_check(tmp_path, spline_settings):
    spline = psf_model_for(spline_settings).spline
    path = spline.save(tmp_path / "s.npz")
    back = SplinePSF.load(path)
    assert np.array_equal(back.coeffs, spline.coeffs) and back.roi_px == spline.roi_px
    with pytest.raises(FormatError, match="sha256"):
        SplinePSF.load(path, "0" * 64)
    with pytest.raises(FormatError, match="planes"):
        SplineModel(back, SimSettings())


def test_train_with_a_spline_bundles_it_in_the_model_dir(tmp_path, spline_settings):
    import argparse
    import json

    from clients.commands.options import settings_from_args
    from engines.modeldir import read_info
    from engines.train import TrainConfig, train

    path = psf_model_for(spline_settings).spline.save(tmp_path / "mine.npz")
    args = argparse.Namespace(psf=path, planes=2, px_nm=None, dz_nm=None)
    settings = settings_from_args(args)
    assert settings.psf.spline is not None and settings.psf.spline.path == str(path.resolve())
    out = tmp_path / "model"
    cfg = TrainConfig(out_dir=out, steps=1, batch=2, crop_px=16, command="test")
    train(cfg, settings)
    recorded = json.loads((out / "model.json").read_text())["settings"]["psf"]["spline"]
    assert recorded == {"path": "psf_spline.npz", "sha256": settings.psf.spline.sha256}
    info = read_info(out)  # relative to the model directory, hash checked on use
    assert psf_model_for(info.settings).spline.roi_px == 25
