"""Blinking and stage drift (engines.kinetics) and ``voxloc simulate --blinking --drift-nm``:
the statistics the settings ask for, ground truth that keeps each emitter's id."""

from __future__ import annotations

import numpy as np
import pytest

from clients.cli import main
from engines.io import read_table
from engines.kinetics import Blinking, StageDrift, draw_emitters


def _mean_times(on: np.ndarray) -> tuple[float, float]:
    """Mean on and off times of ``(frames, emitters)`` states: frames spent in a state per
    switch out of it (the maximum-likelihood estimate; counting whole runs instead would
    favour short ones, long runs being the ones cut off by the ends of the stack)."""
    now, nxt = on[:-1], on[1:]
    return (now.sum() / (now & ~nxt).sum(), (~now).sum() / (~now & nxt).sum())


def test_blinking_has_the_mean_on_and_off_times_and_duty_cycle():
    kin = Blinking(1000, on_frames=4.0, off_frames=60.0, seed=1)
    on = np.concatenate([kin.step(300), kin.step(700)])  # stepping in chunks continues
    mean_on, mean_off = _mean_times(on)
    assert mean_on == pytest.approx(4.0, rel=0.05)
    assert mean_off == pytest.approx(60.0, rel=0.05)
    assert kin.duty_cycle == pytest.approx(4 / 64)
    assert on.mean() == pytest.approx(4 / 64, rel=0.05)
    assert on[0].mean() == pytest.approx(4 / 64, abs=0.025)  # stationary from frame 0
    assert (np.diff(on.astype(np.int8), axis=0) == 1).sum(axis=0).mean() > 10  # re-appear


def test_blinking_refuses_sub_frame_times():
    with pytest.raises(ValueError, match="on_frames must be >= 1"):
        Blinking(10, on_frames=0.5, off_frames=10)


def test_stage_drift_linear_and_polynomial():
    lin = StageDrift.linear((100.0, -50.0), frames=101)
    np.testing.assert_allclose(
        lin.at(np.array([0, 50, 100])), [[0, 0, 0], [50, -25, 0], [100, -50, 0]]
    )
    quad = StageDrift.polynomial([(10.0, 0.0, 0.0), (0.0, 40.0, 20.0)], frames=11)
    np.testing.assert_allclose(quad.at(np.array([5])), [[5.0, 10.0, 5.0]])
    np.testing.assert_allclose(quad.total_nm, [10.0, 40.0, 20.0])


def test_rings_put_emitters_on_circles():
    em = draw_emitters(
        40,
        lo_nm=(0, 0),
        hi_nm=(5000, 5000),
        z_nm=(0.0, 1600.0),
        weight_range=(0.3, 1.0),
        structure="rings",
        seed=2,
    )
    assert len(em) == 40
    rings = em.xyz_nm.reshape(5, 8, 3)
    centre = rings.mean(axis=1, keepdims=True)
    radius = np.linalg.norm((rings - centre)[..., :2], axis=-1)
    np.testing.assert_allclose(radius, 50.0, rtol=1e-9)
    assert np.ptp(rings[..., 2], axis=1).max() == 0  # one z per ring


FRAMES = 400
DRIFT = (100.0, -60.0, 30.0)


@pytest.fixture(scope="module")
def blinking_stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("blink")
    args = ["simulate", "-o", d / "b.tif", "--frames", FRAMES, "--size", 24, "--molecules", 6]
    args += ["--blinking", "--on-frames", 3, "--off-frames", 40, "--drift-nm", *DRIFT]
    args += ["--z-nm", 400, 800, "-q"]
    assert main([str(a) for a in args]) == 0
    return d


def test_simulated_sample_keeps_emitter_ids_and_drifts_as_asked(blinking_stack):
    truth = read_table(blinking_stack / "b_truth.csv")
    drift = np.loadtxt(blinking_stack / "b_drift.csv", delimiter=",", skiprows=1)
    assert drift.shape == (FRAMES, 4)
    np.testing.assert_allclose(drift[-1, 1:], DRIFT, atol=1e-3)
    np.testing.assert_allclose(drift[FRAMES // 2, 1:], np.array(DRIFT) * 200 / 399, atol=1e-3)
    # each emitter sits still in the sample: position minus the stage drift is constant
    emitter = truth.extra["emitter"].astype(int)
    sample_xyz = truth.xyz_nm - drift[truth.frame, 1:]
    for e in np.unique(emitter)[:50]:
        assert np.ptp(sample_xyz[emitter == e], axis=0).max() < 0.01
    assert 400 <= sample_xyz[:, 2].min() and sample_xyz[:, 2].max() <= 800  # thin sample
    on_per_frame = np.bincount(truth.frame, minlength=FRAMES)
    assert on_per_frame.mean() == pytest.approx(6.0, rel=0.25)
    seen = [np.flatnonzero(np.bincount(truth.frame[emitter == e])) for e in np.unique(emitter)]
    assert np.mean([len(f) for f in seen]) > 3 * 3  # emitters re-appear: several bursts


def test_a_sample_of_no_molecules_gives_background_frames(tmp_path):
    args = ["simulate", "-o", tmp_path / "e.tif", "--frames", 3, "--size", 16]
    assert main([str(a) for a in [*args, "--molecules", 0, "--blinking", "-q"]]) == 0
    assert len(read_table(tmp_path / "e_truth.csv")) == 0


def test_default_simulation_has_no_emitter_ids_or_drift_file(tmp_path):
    assert (
        main(["simulate", "-o", str(tmp_path / "s.tif"), "--frames", "2", "--size", "16", "-q"])
        == 0
    )
    header = (tmp_path / "s_truth.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "weight" and "emitter" not in header
    assert not (tmp_path / "s_drift.csv").exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--blinking", "--on-frames", "0.5"], "--on-frames"),
        (["--drift-nm", "100"], "DX DY [DZ]"),
        (["--blinking", "--z-nm", "800", "400"], "--z-nm"),
    ],
)
def test_bad_kinetics_options_name_the_option(tmp_path, voxloc, bad, message):
    res = voxloc("simulate", "-o", tmp_path / "s.tif", "--frames", 2, "--size", 16, *bad, "-q")
    assert res.code != 0 and message in res.err and "Traceback" not in res.err
