"""Every engine result path carries photons, background and precision (issue 15)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from inference_parity import CPU_BACKENDS

from engines.inference import create_engine
from engines.inference.registration import PlaneRegistration
from engines.photometry import PhotometryFit
from engines.precision import PrecisionCalibration, nearest_neighbour_nm
from engines.types import Localizations

CALIBRATION = PrecisionCalibration(
    k=(2.0, 1.8, 1.1), floor_nm=(6.0, 6.0, 8.0), crowding_nm=(15.0, 15.0, 30.0), window_px=9
)


def _cat(locs: list[Localizations], name: str) -> np.ndarray:
    return np.concatenate([getattr(loc, name) for loc in locs])


def _with_precision(model_dir, record):
    path = model_dir / "model.json"
    doc = json.loads(path.read_text())
    doc.pop("precision", None)
    if record is not None:
        doc["precision"] = record
    path.write_text(json.dumps(doc))
    return model_dir


@pytest.fixture
def calibrated_dir(model_dir):
    return _with_precision(model_dir, CALIBRATION.model_dump(mode="json"))


@pytest.fixture
def uncalibrated_dir(model_dir):
    return _with_precision(model_dir, None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_uncalibrated_model_has_photometry_and_nan_precision(backend, uncalibrated_dir, frames):
    with create_engine(uncalibrated_dir, backend) as eng:
        locs = eng.infer(frames)
    photons, bg = _cat(locs, "photons"), _cat(locs, "background")
    assert len(photons) > 50 and np.isfinite(photons).all() and np.isfinite(bg).all()
    assert np.median(photons) > 1000  # a weight-0.3..1 molecule: 1600..5400 intensity units
    assert 9.0 < np.median(bg) < 30.0  # b + poisson_rate = 10, plus neighbours (dense frames)
    assert np.isnan(_cat(locs, "precision_nm")).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_calibrated_precision_in_every_result_path(backend, calibrated_dir, frames):
    with create_engine(calibrated_dir, backend) as eng:
        locs = eng.infer(frames)
        prec = _cat(locs, "precision_nm")
        assert prec.shape[1] == 3 and np.isfinite(prec).all() and (prec >= 6.0).all()
        # the same numbers as the calibration applied to the fit's bound, by hand
        xyz = torch.from_numpy(_cat(locs, "xyz_nm"))
        idx = torch.cat([torch.full((len(loc),), b) for b, loc in enumerate(locs)])
        ph = PhotometryFit(eng.info.settings).measure(torch.from_numpy(frames), idx, xyz)
        want = CALIBRATION.apply(ph.crlb_nm, nearest_neighbour_nm(idx, xyz[:, :2]))
        np.testing.assert_allclose(prec, want.numpy(), rtol=1e-4)
        np.testing.assert_allclose(_cat(locs, "photons"), ph.photons.numpy(), rtol=1e-4)
        # raw camera frames (ADU with baseline and gain), registered by the engine
        reg = PlaneRegistration.create(
            affine_px=np.broadcast_to(np.eye(2, 3), (4, 2, 3)), gain_adu=2.0, baseline_adu=100.0
        )
        raw = np.round(frames * 2.0 + 100.0).astype(np.uint16)
        for out in (eng.infer_raw(raw, reg), eng.submit_raw(raw, reg).result()):
            # rounding to whole ADU moves pixels by up to 0.25 photon: a localization whose
            # confidence sits at the threshold may come or go, the rest are the same ones
            a, b = _same_localizations(out, locs)
            assert len(a) >= 0.8 * len(_cat(locs, "photons"))
            np.testing.assert_allclose(_cat(out, "photons")[a], _cat(locs, "photons")[b], rtol=0.02)
            np.testing.assert_allclose(_cat(out, "precision_nm")[a], prec[b], rtol=0.02)


def _same_localizations(got: list, want: list) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the concatenations) of the localizations of ``got`` and ``want`` in
    the same frame within 1 nm of each other, in the frames that have as many in both (a
    localization more or less moves its neighbours' photometry)."""
    ia, ib, oa, ob = [], [], 0, 0
    for g, w in zip(got, want, strict=True):
        if len(g) and len(g) == len(w):
            d = np.linalg.norm(g.xyz_nm[:, None, :] - w.xyz_nm[None, :, :], axis=2)
            j = d.argmin(axis=1)
            ok = d[np.arange(len(g)), j] < 1.0
            ia.extend(oa + np.flatnonzero(ok))
            ib.extend(ob + j[ok])
        oa, ob = oa + len(g), ob + len(w)
    return np.asarray(ia, int), np.asarray(ib, int)


def test_backends_agree_on_photometry(shared_model_dir, frames):
    results = {}
    for backend in CPU_BACKENDS:
        with create_engine(shared_model_dir, backend) as eng:
            results[backend] = eng.infer(frames)
    a, b = (results[k] for k in CPU_BACKENDS[:2])
    np.testing.assert_allclose(_cat(a, "photons"), _cat(b, "photons"), rtol=1e-3)
    np.testing.assert_allclose(_cat(a, "background"), _cat(b, "background"), rtol=1e-3)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_refine_is_opt_in_and_lowers_the_error_on_registered_planes(backend, calibrated_dir):
    from engines.evaluate.matching import match_localizations
    from engines.simulator import Simulator

    with create_engine(calibrated_dir, backend) as eng:
        sim = Simulator(eng.info.settings.model_copy(update={"margin_px": 0}), seed=3)
        batch = sim.sample(8, 10, height=64, width=64, drift=False)
        frames = batch.frames.numpy()
        assert eng.refine is False
        plain = eng.infer(frames)
        eng.refine = True
        refined = eng.infer(frames)
        reg = PlaneRegistration.create(
            affine_px=np.broadcast_to(np.eye(2, 3), (4, 2, 3)), gain_adu=2.0, baseline_adu=100.0
        )
        raw = eng.infer_raw(np.round(frames * 2.0 + 100.0).astype(np.uint16), reg)
    assert [len(r) for r in refined] == [len(p) for p in plain]
    assert np.isfinite(_cat(refined, "precision_nm")).all()
    np.testing.assert_allclose(_cat(raw, "xyz_nm"), _cat(refined, "xyz_nm"), atol=5.0)
    rms = []
    for locs in (plain, refined):
        err = np.concatenate(
            [
                match_localizations(loc.xyz_nm, batch.molecules(b).numpy()).delta_nm
                for b, loc in enumerate(locs)
            ]
        )
        rms.append(np.sqrt(np.mean(err[:, :2] ** 2)))
    assert rms[1] < 0.8 * rms[0]
