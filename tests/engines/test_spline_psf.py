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


# --- the rendering paths against a slow, direct evaluation ------------------------------
def cubic_bspline(t: np.ndarray) -> np.ndarray:
    """The centred cubic B-spline kernel."""
    a = np.abs(t)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def reference_windows(spline: SplinePSF, plane: int, x_nm, y_nm, z_nm):
    """Windows by summing every coefficient times its dense B-spline basis, float64: the
    z range is extended by repeating the edge slices (the spline is flat beyond it)."""
    c = np.asarray(spline.coeffs[plane], dtype=np.float64)
    c = np.concatenate([c[:1], c[:1], c, c[-1:], c[-1:]])  # knots -2 .. nz + 1
    nz, g, side = spline.coeffs.shape[1], spline.knots, spline.roi_px
    knots_z = np.arange(-2, nz + 2)
    knots_xy = (np.arange(g) - (g - 1) / 2) * spline.step_nm
    wins, rows, cols = [], [], []
    for x, y, z in zip(x_nm, y_nm, z_nm, strict=True):
        col0 = math.floor(x / spline.px_nm) - side // 2
        row0 = math.floor(y / spline.px_nm) - side // 2
        w = np.clip((z - spline.z0_nm) / spline.z_step_nm, 0.0, nz - 1 - 1e-6)
        dx = (col0 + np.arange(side) + 0.5) * spline.px_nm - x  # pixel centre - molecule
        dy = (row0 + np.arange(side) + 0.5) * spline.px_nm - y
        bx = cubic_bspline((dx[:, None] - knots_xy) / spline.step_nm)  # (S, G)
        by = cubic_bspline((dy[:, None] - knots_xy) / spline.step_nm)
        bz = cubic_bspline(w - knots_z)
        wins.append(np.einsum("k,kyx,ay,bx->ab", bz, c, by, bx))
        rows.append(row0)
        cols.append(col0)
    return np.stack(wins), np.array(rows), np.array(cols)


def random_spline(seed: int = 0) -> SplinePSF:
    """Random coefficients (asymmetric, so a swapped axis or tap shows), 3 planes."""
    rng = np.random.default_rng(seed)
    oversample, roi = 3, 7
    g = oversample * (roi + 1) + 7
    coeffs = rng.normal(size=(3, 12, g, g)).astype(np.float32)
    return SplinePSF(
        coeffs=coeffs,
        values=coeffs,
        z0_nm=-100.0,
        z_step_nm=50.0,
        px_nm=110.0,
        oversample=oversample,
        roi_px=roi,
        dz_nm=200.0,
        focal_nm=np.array([100.0, 300.0, 500.0]),
    )


def random_positions(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Across and beyond a 12 x 12 px frame and the spline's z range (edges clamp)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=gen, dtype=torch.float64) * 16 - 2) * 110.0
    y = (torch.rand(n, generator=gen, dtype=torch.float64) * 16 - 2) * 110.0
    z = torch.rand(n, generator=gen, dtype=torch.float64) * 800.0 - 250.0
    return x, y, z


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("exact", [False, True])
def test_windows_equal_a_direct_evaluation_of_the_spline(exact, device):
    spline = random_spline()
    x, y, z = random_positions(60, seed=1)
    for plane in range(spline.planes):
        ref, r_ref, c_ref = reference_windows(spline, plane, x.numpy(), y.numpy(), z.numpy())
        scale = np.abs(ref).max()
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            xt, yt, zt = (a.to(device, dtype) for a in (x, y, z))
            win, row0, col0 = (t.cpu() for t in spline.windows(plane, xt, yt, zt, exact=exact))
            assert win.dtype == dtype
            assert np.array_equal(row0.numpy(), r_ref) and np.array_equal(col0.numpy(), c_ref)
            err = np.abs(win.double().numpy() - ref).max()
            assert err < tol * scale, (plane, dtype, err / scale)


@pytest.mark.parametrize("device", DEVICES)
def test_render_spline_equals_windows_summed_one_by_one(device):
    from engines.spline_psf import render_spline

    spline = random_spline(2)
    batch, per_frame, side = 3, 8, 12
    x, y, z = random_positions(batch * per_frame, seed=3)
    xyz = torch.stack([x, y, z], -1).reshape(batch, per_frame, 3)
    gen = torch.Generator().manual_seed(4)
    amp = torch.rand(batch, per_frame, generator=gen, dtype=torch.float64) + 0.5
    amp[:, -2:] = 0.0  # padding
    drift = torch.randn(batch, spline.planes, 2, generator=gen, dtype=torch.float64) * 40
    ref = np.zeros((batch, spline.planes, side, side))
    for b in range(batch):
        for k in range(spline.planes):
            xs, ys = (xyz[b, :, 0] + drift[b, k, 0]).numpy(), (xyz[b, :, 1] + drift[b, k, 1])
            wins, rows, cols = reference_windows(spline, k, xs, ys.numpy(), xyz[b, :, 2].numpy())
            canvas = np.zeros((side + 40, side + 40))
            for m in range(per_frame):
                r, c = rows[m] + 20, cols[m] + 20
                canvas[r : r + spline.roi_px, c : c + spline.roi_px] += amp[b, m].item() * wins[m]
            ref[b, k] = canvas[20 : 20 + side, 20 : 20 + side]
    scale = np.abs(ref).max()
    for exact in (False, True):
        args = (t.to(device, torch.float32) for t in (xyz, amp, drift))
        got = render_spline(spline, *args, height=side, width=side, exact=exact).cpu()
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert np.abs(got.double().numpy() - ref).max() < 1e-5 * scale, exact
        empty = render_spline(spline, xyz, amp * 0, drift, height=side, width=side, exact=exact)
        assert empty.shape == ref.shape and not empty.any()  # only padding: blank frames


def test_fast_windows_have_the_exact_paths_position_gradient():
    spline = random_spline(5)
    x, y, z = random_positions(20, seed=6)
    weight = torch.randn(20, spline.roi_px, spline.roi_px, dtype=torch.float64)
    grads = []
    for exact in (False, True):
        xyz = torch.stack([x, y, z]).requires_grad_()
        win, _, _ = spline.windows(1, *xyz, exact=exact)
        grads.append(torch.autograd.grad((win * weight).sum(), xyz)[0])
    assert float(grads[0].abs().max()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)
