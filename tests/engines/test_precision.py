"""Calibrated precision (issue 15): the fit of the constants, the neighbour distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.precision import (
    CHI2_GATE,
    CROWDING_RADIUS_NM,
    METHOD,
    SPREAD_CENTRAL_WEIGHT,
    STEP_GATE,
    PrecisionCalibration,
    _margin,
    _miss,
    _spread2,
    calibration_ok,
    coverage_figures,
    fit_axis,
    fit_chi2_term,
    fit_chi2_weight,
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
    k, floor, crowd, step = fit_axis(err, crlb, near)
    assert step == 0.0
    assert k == pytest.approx(2.5, rel=0.05)
    assert floor == pytest.approx(4.0, rel=0.25)
    assert crowd == pytest.approx(20.0, rel=0.1)


def test_calibrated_sigma_meets_the_acceptance_on_its_own_model():
    err, crlb, near, _ = synthetic(seed=1)
    consts = fit_axis(err, crlb, near)
    cal = PrecisionCalibration(
        k=(consts.k,) * 3,
        floor_nm=(consts.floor_nm,) * 3,
        crowding_nm=(consts.crowding_nm,) * 3,
        window_px=9,
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


def with_gross_errors(n: int = 20000, seed: int = 4, *, share=0.02, pull=0.8):
    """:func:`synthetic` errors and a share of gross ones (sd 150 nm), with Gauss-Newton
    steps: the fit's noise (one bound) for all, and ``pull`` of the way back for the gross."""
    err, crlb, near, _ = synthetic(n, seed)
    rng = np.random.default_rng(seed + 1)
    gross = rng.random(n) < share
    err = np.where(gross, rng.normal(0.0, 150.0, n), err)
    step = rng.normal(0.0, crlb) - np.where(gross, pull * err, 0.0)
    return err, crlb, near, step


def test_the_step_term_gives_gross_errors_their_sigma():
    err, crlb, near, step = with_gross_errors()
    fitted = fit_axis(err, crlb, near, step_nm=step)
    assert fitted.step_weight == pytest.approx(1 / 0.8, rel=0.2)
    checks = []
    for consts in (fitted, fit_axis(err, crlb, near)):
        cal = PrecisionCalibration(
            k=(1.0, 1.0, consts.k),
            floor_nm=(1.0, 1.0, consts.floor_nm),
            crowding_nm=(0.0, 0.0, consts.crowding_nm),
            step_weight=(0.0, 0.0, consts.step_weight),
            window_px=9,
        )
        c3 = torch.from_numpy(np.repeat(crlb[:, None], 3, axis=1))
        s3 = torch.from_numpy(np.repeat(step[:, None], 3, axis=1))
        sigma = cal.apply(c3, torch.from_numpy(near), s3).numpy()
        checks.append(coverage_figures(np.repeat(err[:, None], 3, axis=1), sigma)["z"])
    with_step, without = checks
    assert abs(with_step["fraction_within_1_sigma"] - 0.68) <= 0.05
    assert all(abs(r - 1) <= 0.25 for r in with_step["rms_error_over_rms_sigma_by_quintile"])
    # without the term the gross errors lift the low quintiles' rms far above their sigma
    assert max(abs(r - 1) for r in without["rms_error_over_rms_sigma_by_quintile"]) > 0.5


def test_steps_within_the_gate_leave_sigma_alone():
    cal = PrecisionCalibration(
        k=(1.0, 1.0, 1.0), floor_nm=(0.0, 0.0, 0.0), step_weight=(0.0, 0.0, 2.0), window_px=9
    )
    crlb = torch.tensor([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]])
    step = torch.tensor([[0.0, 0.0, 0.9 * STEP_GATE * 5.0], [0.0, 0.0, -40.0]])
    sigma = cal.apply(crlb, torch.tensor([math.inf, math.inf]), step)
    np.testing.assert_allclose(sigma[:, 2].numpy(), [5.0, math.hypot(5.0, 80.0)], rtol=1e-6)
    np.testing.assert_allclose(sigma[:, :2].numpy(), 5.0)


def test_a_record_from_before_the_step_term_loads_and_applies_as_before():
    old = {
        "method": "calibrated CRLB: sigma^2 = (k * crlb)^2 + floor^2 + crowding^2 * "
        "exp(-(d / R)^2) per axis, d the distance to the nearest other localization of the frame",
        "k": [2.0, 2.0, 1.2],
        "floor_nm": [10.0, 9.0, 8.0],
        "crowding_nm": [16.0, 15.0, 29.0],
        "crowding_radius_nm": 400.0,
        "window_px": 9,
        "command": "voxloc evaluate --calibrate-precision",
    }
    cal = PrecisionCalibration.model_validate(old)
    assert cal.step_weight == (0.0, 0.0, 0.0) and cal.method != METHOD
    crlb = torch.tensor([[4.0, 4.0, 3.0]])
    near = torch.tensor([300.0])
    want = np.sqrt(
        (np.array([2.0, 2.0, 1.2]) * [4.0, 4.0, 3.0]) ** 2
        + np.array([10.0, 9.0, 8.0]) ** 2
        + np.array([16.0, 15.0, 29.0]) ** 2 * math.exp(-((300 / 400) ** 2))
    )
    big_step = torch.tensor([[100.0, 100.0, 100.0]])
    for step in (None, big_step):
        np.testing.assert_allclose(cal.apply(crlb, near, step).numpy()[0], want, rtol=1e-6)


def test_the_chi2_term_adds_beyond_its_gate_and_its_weight_is_found_on_blends():
    cal = PrecisionCalibration(
        k=(1.0, 1.0, 1.0), floor_nm=(0.0, 0.0, 0.0), chi2_weight_nm=(0.0, 0.0, 10.0), window_px=9
    )
    crlb = torch.full((4, 3), 5.0)
    chi2 = torch.tensor([1.0, CHI2_GATE, CHI2_GATE + 4.0, math.nan])
    sigma = cal.apply(crlb, torch.full((4,), math.inf), None, chi2)
    np.testing.assert_allclose(sigma[:, 2].numpy(), [5.0, 5.0, math.sqrt(425.0), 5.0], rtol=1e-6)
    np.testing.assert_allclose(sigma[:, :2].numpy(), 5.0)
    np.testing.assert_allclose(cal.apply(crlb, torch.full((4,), math.inf)).numpy(), 5.0)
    # 10 % blends: chi2 excess u, error sd sqrt(sigma^2 + 15^2 u) with sigma right elsewhere
    rng = np.random.default_rng(7)
    n = 20000
    sigma = rng.uniform(5.0, 20.0, n)
    excess = np.where(rng.random(n) < 0.1, rng.exponential(4.0, n), 0.0)
    err = rng.normal(0.0, np.sqrt(sigma**2 + 225.0 * excess))
    assert fit_chi2_weight(err, sigma, CHI2_GATE + excess) == pytest.approx(15.0, abs=4.0)
    plain = rng.normal(0.0, sigma)  # no blends: no term
    assert fit_chi2_weight(plain, sigma, CHI2_GATE + excess) <= 3.0


def test_the_chi2_term_takes_a_gate_and_an_exponent_per_axis_and_old_records_one_gate():
    old = PrecisionCalibration(k=(1.0,) * 3, floor_nm=(0.0,) * 3, window_px=9, chi2_gate=2.0)
    assert old.chi2_gate == (2.0, 2.0, 2.0) and old.chi2_power == (1.0, 1.0, 1.0)
    cal = old.model_copy(
        update={"chi2_weight_nm": (4.0, 4.0, 10.0), "chi2_power": (1.0,) * 2 + (0.5,)}
    )
    sigma = cal.apply(
        torch.full((1, 3), 3.0), torch.full((1,), math.inf), None, torch.tensor([6.0])
    )
    # excess 4: x and y add 4^2 * 4, z 10^2 * sqrt(4)
    np.testing.assert_allclose(
        sigma[0].numpy(), [math.sqrt(73.0), math.sqrt(73.0), math.sqrt(209.0)]
    )


def test_the_chi2_term_search_finds_a_square_root_blend_term_and_the_scale():
    # sigma 10 % too large elsewhere; 5 % blends with excess u over 1.2 and error sd
    # sqrt(sigma^2 + 12^2 sqrt(u)): the search finds the gate, the weight and the scale
    rng = np.random.default_rng(11)
    n = 30000
    true = rng.uniform(2.0, 8.0, n)
    blend = rng.random(n) < 0.05
    chi2 = np.where(blend, 1.2 + rng.exponential(0.5, n), rng.uniform(0.9, 1.15, n))
    excess = np.clip(chi2 - 1.2, 0.0, None)
    err = rng.normal(0.0, np.sqrt(true**2 + 144.0 * np.sqrt(excess)))
    term = fit_chi2_term(err, 1.1 * true, chi2)
    assert 1.1 <= term.gate <= 1.5  # the exponent is not identifiable on these
    assert term.scale == pytest.approx(1 / 1.1, abs=0.05)
    assert term.weight_nm == pytest.approx(12.0, abs=4.0)
    chosen = np.clip(chi2 - term.gate, 0.0, None) ** term.power  # the sigma it records
    sigma = np.sqrt((term.scale * 1.1 * true) ** 2 + term.weight_nm**2 * chosen)
    assert abs(np.mean(np.abs(err) <= sigma) - 0.68) < 0.03


def test_the_refined_search_score_is_below_one_exactly_where_the_acceptance_is_met():
    # sigma 12 % too large: every quintile is within 25 % but the fraction within one sigma
    # (0.74) is not; unscaled (_miss) that scores as close as a 10 % quintile miss does
    rng = np.random.default_rng(5)
    true = rng.uniform(2.0, 8.0, 40000)
    err = np.abs(rng.normal(0.0, true))
    for scale in (0.8, 0.9, 1.0, 1.05, 1.12, 1.25):
        sigma = scale * true
        one = coverage_figures(np.stack([err] * 3, 1), np.stack([sigma] * 3, 1))
        assert (_margin(err, sigma) < 1.0) == calibration_ok(one), scale
    assert _margin(err, 1.12 * true) > 1.0 > _margin(err, 1.05 * true)
    assert _miss(err, 1.12 * true) < 0.25  # what the old score made of the same miss


def test_a_cells_spread_weighs_the_central_half_width_against_the_rms():
    rng = np.random.default_rng(3)
    gauss = np.abs(rng.normal(0.0, 5.0, 200000))
    assert math.sqrt(_spread2(gauss)) == pytest.approx(5.0, rel=0.01)  # both agree
    heavy = np.abs(rng.laplace(0.0, 5.0, 200000))  # rms above the central half-width
    q68, rms = np.quantile(heavy, 0.6827), np.sqrt(np.mean(heavy**2))
    a = SPREAD_CENTRAL_WEIGHT
    assert 1.0 < a < 2.0
    assert q68 < math.sqrt(_spread2(heavy)) < math.sqrt(q68 * rms) < rms
    assert _spread2(heavy) == pytest.approx(q68**a * rms ** (2 - a), rel=1e-9)
