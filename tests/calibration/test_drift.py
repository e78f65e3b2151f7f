"""Per-plane offset estimation from localizations of a structured sample."""

from __future__ import annotations

import numpy as np
import pytest

from engines.calibration.drift import (
    DriftEstimator,
    DriftSettings,
    corrected_affines,
    estimate_offsets,
)
from engines.types import Localizations

OFFSETS = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, -30.0], [21.2, 21.2]])  # 30 nm each


def filaments(n_locs: int, *, offsets: np.ndarray, sxy: float, sz: float, seed: int,
              n_fil: int = 40, size_nm: float = 12288.0, depth_nm: float = 1600.0,
              dz_nm: float = 400.0, background: float = 0.1) -> np.ndarray:
    """``(N, 3)`` localizations on straight filaments crossing the whole depth (elevation
    20-80 deg, random azimuth) plus uniform false positives; every molecule is displaced by
    the offset of the slab (plane) it truly lies in, then blurred by the localization error."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, [size_nm, size_nm, depth_nm], (n_fil, 3))
    el = np.radians(rng.uniform(20, 80, n_fil))
    az = rng.uniform(0, 2 * np.pi, n_fil)
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)
    t_lo, t_hi = -c[:, 2] / d[:, 2], (depth_nm - c[:, 2]) / d[:, 2]
    fil = rng.choice(n_fil, n_locs, p=(t_hi - t_lo) / (t_hi - t_lo).sum())
    xyz = c[fil] + rng.uniform(t_lo[fil], t_hi[fil])[:, None] * d[fil]
    xyz = np.concatenate([xyz, rng.uniform(0, [size_nm, size_nm, depth_nm],
                                           (int(background * n_locs), 3))])
    slab = np.clip((xyz[:, 2] // dz_nm).astype(int), 0, len(offsets) - 1)
    xyz[:, :2] += offsets[slab]
    return xyz + rng.normal(0, [sxy, sxy, sz], xyz.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_30nm_plane_offsets_within_5nm(seed):
    xyz = filaments(20_000, offsets=OFFSETS, sxy=5.0, sz=10.0, seed=seed)
    est = estimate_offsets(xyz, DriftSettings())
    assert np.abs(est.offsets_nm - OFFSETS).max() < 5.0, est.offsets_nm
    assert (est.pairs > 100).all()


def test_no_offset_gives_none():
    xyz = filaments(20_000, offsets=np.zeros((4, 2)), sxy=5.0, sz=10.0, seed=5)
    est = estimate_offsets(xyz, DriftSettings())
    assert np.abs(est.offsets_nm).max() < 5.0


def test_observer_window_and_stats():
    service_types = pytest.importorskip("service.types")
    wire = pytest.importorskip("service.wire")
    est = DriftEstimator(DriftSettings(window_locs=20_000, every_frames=10))
    assert isinstance(est, service_types.LocalizationObserver)
    assert est.stats()["offsets_nm"] is None
    xyz = filaments(30_000, offsets=OFFSETS, sxy=5.0, sz=10.0, seed=0)
    for frame, chunk in enumerate(np.array_split(xyz, 100)):
        locs = Localizations(frame, chunk.astype(np.float32), np.ones(len(chunk), np.float32))
        est.observe(wire.LocsMessage(
            source="test", seq=frame, frame=frame, model="m", model_version="1",
            threshold=0.5, t_cam_ns=0, t_recv_ns=0, t_pub_ns=0, locs=locs))
    stats = est.stats()
    assert 20_000 <= stats["window_locs"] < 20_000 + 400  # the window slid
    assert stats["frames"] == 100
    np.testing.assert_allclose(stats["offsets_nm"], OFFSETS, atol=5.0)


def test_feedback_shifts_the_affines():
    aff = {"cam0": np.eye(2, 3), "cam1": np.eye(2, 3)}
    out = corrected_affines(aff, {"cam0": 0, "cam1": 1}, OFFSETS[:2], px_nm=192.0)
    np.testing.assert_allclose(out["cam1"][:, 2], [-30.0 / 192.0, 0.0])
    np.testing.assert_allclose(out["cam0"], np.eye(2, 3))


def test_bands_must_fit_in_a_slab():
    with pytest.raises(ValueError, match="must fit in one slab"):
        DriftSettings(dz_nm=200.0)
