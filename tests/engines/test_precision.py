"""Calibrated precision (issue 15): the fit of the constants, the neighbour distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.precision import (
    CROWDING_RADIUS_NM,
    PrecisionCalibration,
    calibration_ok,
    coverage_figures,
    fit_axis,
    nearest_neighbour_nm,
)


def synthetic(n: int = 20000, seed: int = 0, *, k=2.5, floor=4.0, crowd=20.0):
    rng = np.random.default_rng(seed)
    crlb = rng.uniform(1.0, 8.0, n)
    near = np.where(rng.random(n) < 0.3, rng.uniform(0, 900, n), rng.uniform(900, 5000, n))
    sigma = np.sqrt((k * crlb) ** 2 + floor**2 + crowd**2 * np.exp(-((near / 400.0) ** 2)))
    return rng.normal(0.0, sigma), crlb, near, sigma


def test_fit_recovers_the_constants_of_gaussian_errors():
    err, crlb, near, _ = synthetic()
    k, floor, crowd = fit_axis(err, crlb, near)
    assert k == pytest.approx(2.5, rel=0.05)
    assert floor == pytest.approx(4.0, rel=0.25)
    assert crowd == pytest.approx(20.0, rel=0.1)


def test_calibrated_sigma_meets_the_acceptance_on_its_own_model():
    err, crlb, near, _ = synthetic(seed=1)
    consts = fit_axis(err, crlb, near)
    cal = PrecisionCalibration(
        k=(consts[0],) * 3, floor_nm=(consts[1],) * 3, crowding_nm=(consts[2],) * 3, window_px=9
    )
    c3 = torch.from_numpy(np.repeat(crlb[:, None], 3, axis=1))
    sigma = cal.apply(c3, torch.from_numpy(near)).numpy()
    figs = coverage_figures(np.repeat(err[:, None], 3, axis=1), sigma)
    assert figs["x"]["fraction_within_1_sigma"] == pytest.approx(0.683, abs=0.02)
    assert calibration_ok(figs)
    # an uncalibrated bound fails it
    assert not calibration_ok(coverage_figures(np.repeat(err[:, None], 3, axis=1), c3.numpy()))


def test_apply_without_neighbours_is_the_scaled_bound_with_its_floor():
    cal = PrecisionCalibration(
        k=(2.0, 2.0, 1.0), floor_nm=(3.0, 3.0, 4.0), crowding_nm=(10.0, 10.0, 10.0), window_px=9
    )
    sigma = cal.apply(torch.tensor([[4.0, 4.0, 3.0]]), torch.tensor([math.inf]))
    np.testing.assert_allclose(sigma.numpy(), [[math.hypot(8, 3), math.hypot(8, 3), 5.0]])
    close = cal.apply(torch.tensor([[4.0, 4.0, 3.0]]), torch.tensor([CROWDING_RADIUS_NM]))
    assert float(close[0, 2]) == pytest.approx(math.sqrt(25 + 100 / math.e))


@pytest.mark.parametrize("max_pairs", [1 << 22, 7])
def test_nearest_neighbour_is_per_frame(max_pairs):
    rng = np.random.default_rng(3)
    counts = [5, 1, 0, 12, 3]
    frame = np.repeat(np.arange(len(counts)), counts)
    xy = rng.uniform(0, 5000, (len(frame), 2)).astype(np.float32)
    got = nearest_neighbour_nm(
        torch.from_numpy(frame), torch.from_numpy(xy), max_pairs=max_pairs
    ).numpy()
    want = np.full(len(frame), np.inf)
    for f in range(len(counts)):
        idx = np.flatnonzero(frame == f)
        for i in idx:
            others = [j for j in idx if j != i]
            if others:
                want[i] = np.min(np.hypot(*(xy[others] - xy[i]).T))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.isinf(got[frame == 1]).all()


def test_too_few_localizations_are_refused():
    err, crlb, near, _ = synthetic(n=50)
    with pytest.raises(ValueError, match="at least"):
        fit_axis(err, crlb, near)
