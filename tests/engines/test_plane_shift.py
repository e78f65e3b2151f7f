"""Each frame's plane shifts fitted with the refinement (engines.plane_shift)."""

from __future__ import annotations

import pytest
import torch

from engines.config import Geometry, SimSettings
from engines.photometry import PhotometryFit
from engines.psf import render_planes
from engines.psf_model import spline_ref
from engines.simulator import Simulator
from engines.window_psf import WindowPSF
from tests.engines.test_spline_psf import gaussian_spline

PAPER = SimSettings(geometry=Geometry(planes=4, height=40, width=40), margin_px=0)


def drifted(settings: SimSettings, frames: int = 16, molecules: int = 10, seed: int = 3):
    """Frames with the settings' per-plane drift, the true positions and a start 15 / 15 /
    30 nm (rms) off them, as a network's: (batch, frame index, truth, start)."""
    batch = Simulator(settings, seed=seed).sample(frames, molecules, drift=True)
    idx = torch.arange(frames)[:, None].expand(frames, batch.xyz_nm.shape[1])[batch.valid]
    xyz = batch.xyz_nm[batch.valid]
    gen = torch.Generator().manual_seed(seed)
    start = xyz + torch.randn(xyz.shape, generator=gen) * torch.tensor([15.0, 15.0, 30.0])
    return batch, idx, xyz, start


def rms(err: torch.Tensor) -> torch.Tensor:
    return err.pow(2).mean(dim=0).sqrt()


def test_refinement_fits_the_planes_shifts_and_then_the_lateral_positions():
    batch, idx, xyz, start = drifted(PAPER)
    fit = PhotometryFit(PAPER)

    def measure(p, **kw):
        return fit.measure(batch.frames, idx, p, **kw)

    blind = fit.refine(measure, start)[0]  # no frame index: no shifts, as before
    assert fit.plane_shift_nm is None
    pos = fit.refine(measure, start, frame_idx=idx, frames=16)[0]
    shift = fit.plane_shift_nm
    assert shift is not None and shift.shape == (16, 4, 2)
    assert bool((shift[:, 0] == 0).all())  # plane 0 is the reference
    assert float(rms((shift - batch.drift_nm).reshape(-1, 1))) < 6.0  # drift +-48 nm
    lateral = rms(pos - xyz)[:2]
    assert bool((lateral < 0.5 * rms(blind - xyz)[:2]).all())
    assert bool((lateral < 0.5 * rms(start - xyz)[:2]).all())
    assert float(rms(pos - xyz)[2]) < float(rms(start - xyz)[2])


def test_registered_frames_keep_their_shifts_at_zero():
    """Where the planes do not move, a step must explain the pixels significantly better
    than noise fitted by six shifts would: the frames keep 0 and their positions."""
    settings = PAPER.model_copy(update={"drift_max_nm": 0.0})
    batch, idx, xyz, start = drifted(settings)  # frames drawn without drift
    fit = PhotometryFit(PAPER)  # a model that expects drift
    measure = lambda p, **kw: fit.measure(batch.frames, idx, p, **kw)  # noqa: E731
    pos = fit.refine(measure, start, frame_idx=idx, frames=16)[0]
    assert fit.plane_shift_nm is not None
    assert float((fit.plane_shift_nm != 0).any(dim=(1, 2)).float().mean()) <= 0.2
    blind = fit.refine(measure, start)[0]
    assert bool((rms(pos - xyz)[:2] < 1.15 * rms(blind - xyz)[:2]).all())


def test_a_frame_without_molecules_keeps_its_shifts_at_zero():
    batch, idx, xyz, start = drifted(PAPER, frames=4)
    fit = PhotometryFit(PAPER)
    keep = idx != 2
    fit.refine(
        lambda p, **kw: fit.measure(batch.frames, idx[keep], p, **kw),
        start[keep],
        frame_idx=idx[keep],
        frames=4,
    )
    assert fit.plane_shift_nm is not None
    assert float(fit.plane_shift_nm[2].abs().max()) == 0.0
    assert float(fit.plane_shift_nm[[0, 1, 3], 1:].abs().max()) > 1.0


def test_no_drift_in_the_settings_means_no_shifts():
    settings = PAPER.model_copy(update={"drift_max_nm": 0.0})
    batch, idx, xyz, start = drifted(settings, frames=4)
    fit = PhotometryFit(settings)
    measure = lambda p, **kw: fit.measure(batch.frames, idx, p, **kw)  # noqa: E731
    with_idx = fit.refine(measure, start, frame_idx=idx, frames=4)[0]
    assert fit.plane_shift_nm is None
    torch.testing.assert_close(with_idx, fit.refine(measure, start)[0])


def test_shifted_windows_are_the_simulators_drift_and_their_derivatives_are_right():
    psf = WindowPSF(PAPER, 9)
    gen = torch.Generator().manual_seed(0)
    xyz = torch.tensor([[900.0, 860.0, 0.0]]) + torch.rand(6, 3, generator=gen) * torch.tensor(
        [40.0, 40.0, 1600.0]
    )
    origin = torch.tensor([[0.0, 0.0, 0.0]]).expand(6, 3)
    shift = (torch.rand(6, 4, 2, generator=gen) - 0.5) * 96.0
    u, du, _ = psf.unit_with_derivatives(xyz, origin, shift)
    ref = render_planes(
        xyz[:, None, :],
        torch.ones(6, 1),
        shift,
        psf.focal,
        px_nm=192.0,
        height=9,
        width=9,
        psf=PAPER.psf,
    )
    torch.testing.assert_close(u, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(psf.unit(xyz, origin, shift)[0], u)
    h = 0.5
    for axis in range(3):
        step = torch.zeros(3)
        step[axis] = h
        num = (psf.unit(xyz + step, origin, shift)[0] - psf.unit(xyz - step, origin, shift)[0]) / (
            2 * h
        )
        torch.testing.assert_close(du[axis], num, rtol=2e-2, atol=2e-3)


def test_spline_model_shifts(tmp_path):
    spline = gaussian_spline(PAPER, roi_px=17)
    path = spline.save(tmp_path / "gauss.npz")
    settings = PAPER.model_copy(
        update={"psf": PAPER.psf.model_copy(update={"spline": spline_ref(path)})}
    )
    batch, idx, xyz, start = drifted(PAPER, frames=6)  # Gaussian frames, the spline's model
    fit = PhotometryFit(settings)
    pos = fit.refine(
        lambda p, **kw: fit.measure(batch.frames, idx, p, **kw), start, frame_idx=idx, frames=6
    )[0]
    assert fit.plane_shift_nm is not None
    assert float(rms((fit.plane_shift_nm - batch.drift_nm).reshape(-1, 1))) < 8.0
    assert bool((rms(pos - xyz)[:2] < 0.6 * rms(start - xyz)[:2]).all())


@pytest.mark.parametrize("molecules", [1, 3])
def test_sparse_frames_stay_finite(molecules):
    batch, idx, xyz, start = drifted(PAPER, frames=3, molecules=molecules, seed=5)
    fit = PhotometryFit(PAPER)
    pos, ph = fit.refine(
        lambda p, **kw: fit.measure(batch.frames, idx, p, **kw), start, frame_idx=idx, frames=3
    )
    assert bool(torch.isfinite(pos).all()) and fit.plane_shift_nm is not None
    assert bool(torch.isfinite(fit.plane_shift_nm).all())
    assert float(fit.plane_shift_nm.abs().max()) <= 2 * PAPER.drift_max_nm


def refined_on(device: str, batch, idx, start, frames: int):
    """The refined positions and plane shifts with everything on ``device``."""
    fit = PhotometryFit(PAPER)
    on, i, s = batch.frames.to(device), idx.to(device), start.to(device)
    pos = fit.refine(lambda p, **kw: fit.measure(on, i, p, **kw), s, frame_idx=i, frames=frames)
    assert fit.plane_shift_nm is not None and fit.plane_shift_nm.device.type == device
    return pos[0].cpu(), fit.plane_shift_nm.cpu()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_shifts_on_the_gpu_match_the_cpu():
    batch, idx, xyz, start = drifted(PAPER, frames=8)
    cpu, gpu = (refined_on(dev, batch, idx, start, 8) for dev in ("cpu", "cuda"))
    torch.testing.assert_close(gpu[1], cpu[1], atol=0.5, rtol=0)
    torch.testing.assert_close(gpu[0], cpu[0], atol=0.5, rtol=0)


def refined_fit(frames_settings: SimSettings, frames: int = 64, molecules: int = 3, seed: int = 5):
    """Drifted-start frames drawn with ``frames_settings``, refined by the default
    settings' fit (which expects drift): truth, positions, their photometry (the joint
    bound), each frame's shifts and the fit's ``measure`` (with the bound)."""
    batch, idx, xyz, start = drifted(frames_settings, frames, molecules, seed)
    fit = PhotometryFit(PAPER)

    def measure(p, **kw):
        return fit.measure(batch.frames, idx, p, crlb=True, **kw)

    with torch.inference_mode():
        pos, ph = fit.refine(measure, start, frame_idx=idx, frames=frames)
    assert fit.plane_shift_nm is not None
    return xyz, idx, pos, ph, fit.plane_shift_nm, measure


def refined_with_bounds(frames_settings: SimSettings):
    """:func:`refined_fit` of 64 frames of 3, with the plain bound at the same shifts and
    which localizations' frames kept shifts of 0."""
    xyz, idx, pos, ph, shift, measure = refined_fit(frames_settings)
    with torch.inference_mode():
        plain = measure(pos, shift_nm=shift[idx]).crlb_nm
    return xyz, pos, ph, plain, (shift == 0).all(dim=2).all(dim=1)[idx]


def test_the_bound_of_refined_positions_carries_the_shifts_uncertainty():
    """In a frame of few molecules the fitted shifts are poorly known, and every refined
    lateral position inherits their error: the plain bound (shifts taken as exact) is ~3x
    too small there, the joint one (engines.plane_shift.joint_bound) predicts the error."""
    xyz, pos, ph, plain, _ = refined_with_bounds(PAPER)
    assert ph.shift_info is None
    ok = (ph.chi2 <= 1.5) & torch.isfinite(ph.crlb_nm).all(dim=1)
    assert int(ok.sum()) > 150
    assert bool((ph.crlb_nm[ok] >= plain[ok] * (1 - 1e-5)).all())
    err = rms(pos[ok] - xyz[ok])
    assert bool((err[:2] > 2.0 * rms(plain[ok])[:2]).all())
    ratio = err / rms(ph.crlb_nm[ok])
    assert bool(((ratio > 0.8) & (ratio < 1.3)).all()), ratio


def test_a_batch_without_localizations_refines_to_nothing():
    """Dark frames (before the laser is on) give no localizations: nothing to fit."""
    batch, idx, xyz, start = drifted(PAPER, frames=2)
    fit = PhotometryFit(PAPER)
    none = torch.zeros(0, dtype=torch.long)
    pos, ph = fit.refine(
        lambda p, **kw: fit.measure(batch.frames, none, p, **kw),
        start[:0],
        frame_idx=none,
        frames=2,
    )
    assert pos.shape == (0, 3) and ph.photons.shape == (0,) and fit.plane_shift_nm is None


def test_registered_frames_keep_the_plain_bound():
    """Frames whose shifts stay 0 (their pixels show no drift) are as good as with known
    shifts: the joint term would make their sigma ~2.7x too large at 3 per frame."""
    settings = PAPER.model_copy(update={"drift_max_nm": 0.0})
    xyz, pos, ph, plain, zero = refined_with_bounds(settings)  # a model that expects drift
    assert float(zero.float().mean()) > 0.8
    torch.testing.assert_close(ph.crlb_nm[zero], plain[zero])
    ok = zero & (ph.chi2 <= 1.5)
    ratio = rms(pos[ok] - xyz[ok]) / rms(ph.crlb_nm[ok])
    assert bool(((ratio[:2] > 0.8) & (ratio[:2] < 1.3)).all()), ratio


def test_the_positions_response_to_the_shifts_is_the_fits_own():
    """``shift_sens`` (-H^-1 C, engines.plane_shift.schur_terms) against the fit itself:
    move one plane's shift by 4 nm and the Gauss-Newton step of every position changes by
    ``shift_sens`` times that, to first order."""
    _, idx, pos, _, shift, measure = refined_fit(PAPER, frames=8, molecules=6, seed=9)
    with torch.inference_mode():
        at = measure(pos, shift_nm=shift[idx], system=True)
        for plane, axis in ((1, 0), (3, 1)):
            moved = shift.clone()
            moved[:, plane, axis] += 4.0
            step = measure(pos, shift_nm=moved[idx]).step_nm - at.step_nm
            q = 2 * (plane - 1) + axis
            want = at.shift_sens[:, :, q].float() * 4.0
            ok = torch.isfinite(step).all(dim=1) & (at.chi2 < 1.5)
            assert int(ok.sum()) > 30
            got, exp = step[ok][:, axis].double(), want[ok][:, axis].double()
            assert float(exp.abs().max()) > 0.5  # the shift moves the positions
            slope = float((got * exp).sum() / (exp * exp).sum())
            corr = float(torch.corrcoef(torch.stack([got, exp]))[0, 1])
            assert 0.9 < slope < 1.1 and corr > 0.95, (slope, corr)
