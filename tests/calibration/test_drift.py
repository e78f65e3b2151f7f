"""Plane offsets measured in registered frames at the localizations: the fit, the joint
solve, and the live estimator (worker thread, window, stats, gauges, feedback)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from engines.calibration.drift import DriftEstimator, DriftSettings, registration_changes
from engines.calibration.gaussfit import SeparableGaussian, fit_gaussians
from engines.calibration.plane_offsets import PlaneMeasurements, measure_planes, solve_offsets
from engines.config import SimSettings
from engines.psf import render_planes
from engines.simulator import Simulator
from engines.types import Localizations
from service.settings import CameraRegistration
from service.wire import LocsMessage

PX_NM = 192.0
OFFSETS = np.array([[0.0, 0.0], [30.0, -30.0], [-30.0, 30.0], [21.2, 21.2]])  # 30 nm each


def render(xyz_nm: torch.Tensor, offsets: np.ndarray, seed: int) -> np.ndarray:
    """``(B, P, 64, 64)`` frames (paper noise) of ``(B, M, 3)`` molecules, plane ``k``
    displaced by ``offsets[k]`` (the simulator's per-plane drift)."""
    s = SimSettings()
    sim = Simulator(s, seed=seed)
    b = xyz_nm.shape[0]
    weights = 0.3 + 0.7 * torch.rand(xyz_nm.shape[:2], generator=sim.gen)
    drift = torch.tensor(offsets, dtype=torch.float32)[None].expand(b, -1, -1)
    clean = render_planes(
        xyz_nm,
        weights,
        drift,
        torch.tensor(s.focal_planes_nm()),
        px_nm=PX_NM,
        height=64,
        width=64,
        psf=s.psf,
    )
    return sim.add_noise(clean + s.psf.b).numpy()


def random_sample(frames: int, molecules: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(frames, molecules, 3, generator=g) * torch.tensor(
        [64 * PX_NM, 64 * PX_NM, 1600.0]
    )


def filament_sample(frames: int, molecules: int, seed: int) -> torch.Tensor:
    """Blinking molecules on 12 fixed straight filaments that cross the whole depth at
    25 deg elevation, all with the same azimuth (a structure that is not isotropic)."""
    rng = np.random.default_rng(seed)
    start = rng.uniform([4 * PX_NM, 4 * PX_NM], [40 * PX_NM, 50 * PX_NM], (12, 2))
    run_nm = 1600.0 / np.tan(np.radians(25.0)) * np.array([np.cos(0.4), np.sin(0.4)])
    fil = rng.integers(0, 12, (frames, molecules))
    t = rng.uniform(0, 1, (frames, molecules, 1))
    xyz = np.concatenate([start[fil] + t * run_nm, t * 1600.0], -1)
    return torch.tensor(xyz, dtype=torch.float32)


def measure(
    frames: np.ndarray, xyz: torch.Tensor, offsets: np.ndarray, seed: int, error_nm: float = 20.0
) -> PlaneMeasurements:
    """Measurements at localizations = truth + Gaussian error + a bias towards the offset of
    the molecule's own plane (what a network trained without that offset does)."""
    rng = np.random.default_rng(seed)
    out = []
    for f, pos in zip(frames, xyz.numpy(), strict=True):
        slab = np.clip((pos[:, 2] // 400).astype(int), 0, 3)
        xy = pos[:, :2] + rng.normal(0, error_nm, (len(pos), 2)) + 0.5 * offsets[slab]
        out.append(measure_planes(f, xy, px_nm=PX_NM))
    return PlaneMeasurements.concat(out, 4)


@pytest.mark.parametrize("sample", [random_sample, filament_sample], ids=["random", "filaments"])
def test_30nm_plane_offsets_within_5nm(sample):
    xyz = sample(60, 36, seed=3)
    est = solve_offsets(measure(render(xyz, OFFSETS, seed=3), xyz, OFFSETS, seed=3))
    assert np.abs(est.offsets_nm - OFFSETS).max() < 3.0, est.offsets_nm
    assert (est.se_nm[1:] > 0).all() and (est.se_nm < 1.5).all(), est.se_nm
    assert (est.locs > 300).all() and est.molecules > 500


def test_no_offset_gives_zero():
    xyz = random_sample(60, 36, seed=4)
    zero = np.zeros((4, 2))
    est = solve_offsets(measure(render(xyz, zero, seed=4), xyz, zero, seed=4, error_nm=30.0))
    assert np.abs(est.offsets_nm).max() < 2.0, est.offsets_nm


def test_dense_frames_still_within_5nm():
    """150 molecules per 64x64 frame: most localizations have neighbours and are skipped,
    unlocalized neighbours pull the fits in every direction."""
    xyz = random_sample(40, 150, seed=5)
    est = solve_offsets(measure(render(xyz, OFFSETS, seed=5), xyz, OFFSETS, seed=5))
    assert np.abs(est.offsets_nm - OFFSETS).max() < 5.0, est.offsets_nm


def test_separable_normal_matrix_matches_finite_differences():
    rng = np.random.default_rng(1)
    m, s = 6, 9
    theta = np.stack(
        [
            rng.normal(0, 0.5, m),
            rng.normal(0, 0.5, m),
            np.log(rng.uniform(0.7, 2, m)),
            rng.uniform(10, 100, m),
            rng.uniform(0, 10, m),
        ],
        1,
    )
    gx = np.tile(np.arange(s) - 4.0 + 0.3, (m, 1))
    gy = np.tile(np.arange(s) - 4.0 - 0.2, (m, 1))
    frac = rng.uniform(0, 1, (m, 2))  # bilinear resampling of the registration
    frac[0] = 0.0
    model = SeparableGaussian(theta, gx, gy, frac)
    jac = np.zeros((m, s * s, 5))
    for p in range(5):  # central differences
        up, down = theta.copy(), theta.copy()
        up[:, p] += 1e-5
        down[:, p] -= 1e-5
        jac[:, :, p] = (
            (
                SeparableGaussian(up, gx, gy, frac).image
                - SeparableGaussian(down, gx, gy, frac).image
            )
            / 2e-5
        ).reshape(m, -1)
    resid = rng.standard_normal((m, s, s))
    np.testing.assert_allclose(
        model.normal_matrix(), np.einsum("mnp,mnq->mpq", jac, jac), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(
        model.gradient(resid),
        np.einsum("mnp,mn->mp", jac, resid.reshape(m, -1)),
        rtol=1e-4,
        atol=1e-3,
    )


def test_fit_recovers_centre_with_honest_error():
    rng = np.random.default_rng(2)
    m, s = 400, 9
    true = rng.uniform(-1, 1, (m, 2))
    grid = np.arange(s) - 4.0
    two_var = 2 * rng.uniform(0.7, 2.0, (m, 1, 1)) ** 2
    img = (
        80
        * np.exp(-((grid[None, :, None] - true[:, None, None, 1]) ** 2) / two_var)
        * np.exp(-((grid[None, None, :] - true[:, None, None, 0]) ** 2) / two_var)
        + 10
        + 4.4 * rng.standard_normal((m, s, s))
    )
    g = np.tile(grid, (m, 1))
    centre, var, _ = fit_gaussians(img, g, g)
    z = (centre - true) / np.sqrt(var)
    assert np.abs(centre - true).max() < 0.3
    assert 0.7 < z.std() < 1.4  # the reported variance is the real one


def test_settings_refuse_bad_values():
    with pytest.raises(ValidationError, match="patch_px must be odd, got 8"):
        DriftSettings(patch_px=8)
    with pytest.raises(ValidationError, match="window_locs"):
        DriftSettings(window_locs=0)


def test_registration_changes_cancel_the_offset():
    regs = {
        "cam0": CameraRegistration(),
        "cam1": CameraRegistration(affine=[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]),
    }
    out = registration_changes(regs, {"cam0": 0, "cam1": 1}, OFFSETS[:2], px_nm=PX_NM)
    assert set(out) == {"cam1"}  # plane 0 is the reference, never moved
    np.testing.assert_allclose(
        np.array(out["cam1"]["affine"])[:, 2], [2.0 - 30.0 / PX_NM, -1.0 + 30.0 / PX_NM]
    )


# -- the live estimator -------------------------------------------------------------------
def messages(offsets: np.ndarray, frames: int, seed: int) -> list[tuple[LocsMessage, np.ndarray]]:
    xyz = random_sample(frames, 36, seed=seed)
    imgs = render(xyz, offsets, seed=seed).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for f in range(frames):
        pos = xyz[f].numpy() + rng.normal(0, [20, 20, 40], (xyz.shape[1], 3))
        locs = Localizations(f, pos.astype(np.float32), np.ones(len(pos), np.float32))
        out.append(
            (
                LocsMessage(
                    source="test",
                    seq=f,
                    frame=f,
                    model="m",
                    model_version="1",
                    threshold=0.5,
                    t_cam_ns=0,
                    t_recv_ns=0,
                    t_pub_ns=0,
                    locs=locs,
                ),
                imgs[f],
            )
        )
    return out


def wait_until(cond, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def offset_stream():
    return messages(OFFSETS, 80, seed=6)


def test_estimator_window_stats_and_gauges(offset_stream):
    registry = CollectorRegistry()
    est = DriftEstimator(
        DriftSettings(window_locs=600, update_sets=10, queue_sets=100),
        px_nm=PX_NM,
        planes=4,
        registry=registry,
    )
    assert est.stats()["planes"] is None
    try:
        for msg, planes in offset_stream:
            est.observe(msg, planes)
        wait_until(
            lambda: est.stats()["sets_measured"] == 80 and est.stats()["sets_not_estimated"] == 0,
            "all sets estimated",
        )
    finally:
        est.close()
    stats = est.stats()
    assert stats["sets_seen"] == 80 and stats["sets_dropped"] == 0 and stats["queued"] == 0
    assert 600 <= stats["window_locs"] < 650, stats  # slid by whole sets (80 sets: ~1100)
    got = np.array([[p["x_nm"], p["y_nm"]] for p in stats["planes"]])
    np.testing.assert_allclose(got, OFFSETS, atol=5.0)
    assert all(p["locs"] > 300 and p["se_x_nm"] < 2.5 for p in stats["planes"][1:])
    metrics = generate_latest(registry).decode()
    assert 'voxloc_plane_offset_nm{axis="x",plane="1"} 3' in metrics  # 30 +- a few nm
    assert "voxloc_drift_dropped_sets_total" in metrics


def test_full_queue_drops_are_counted(offset_stream):
    est = DriftEstimator(DriftSettings(queue_sets=1, max_busy_fraction=0.01), px_nm=PX_NM, planes=4)
    try:
        for msg, planes in offset_stream[:20]:
            est.observe(msg, planes)
        assert est.stats()["sets_dropped"] > 0  # the worker sleeps 99 % of its time
    finally:
        est.close()
    assert est.stats()["sets_dropped"] + est.stats()["sets_measured"] <= 20


def test_feedback_hands_over_confident_offsets_and_restarts(offset_stream):
    got: list[np.ndarray] = []
    est = DriftEstimator(
        DriftSettings(
            feedback=True,
            feedback_min_locs=400,
            update_sets=5,
            feedback_settle_sets=1000,
            queue_sets=100,
        ),
        px_nm=PX_NM,
        planes=4,
        correct=got.append,
    )
    try:
        for msg, planes in offset_stream:
            est.observe(msg, planes)
        wait_until(lambda: est.stats()["feedbacks"] == 1, "a feedback")
    finally:
        est.close()
    assert len(got) == 1
    np.testing.assert_allclose(got[0], OFFSETS, atol=5.0)
    stats = est.stats()
    assert stats["sets_seen"] == 80 and stats["window_locs"] == 0  # settling: nothing new
    assert stats["planes"] is None  # the old estimate described the old registration


def test_no_feedback_without_an_offset():
    got: list[np.ndarray] = []
    est = DriftEstimator(
        DriftSettings(feedback=True, feedback_min_locs=400, update_sets=5, queue_sets=100),
        px_nm=PX_NM,
        planes=4,
        correct=got.append,
    )
    try:
        for msg, planes in messages(np.zeros((4, 2)), 40, seed=7):
            est.observe(msg, planes)
        wait_until(
            lambda: est.stats()["sets_measured"] == 40 and est.stats()["sets_not_estimated"] == 0,
            "all sets estimated",
        )
    finally:
        est.close()
    assert got == [] and est.stats()["feedbacks"] == 0
    got_xy = np.array([[p["x_nm"], p["y_nm"]] for p in est.stats()["planes"]])
    assert np.abs(got_xy).max() < 3.0
