"""Greedy nearest-first matching (SMLM challenge 2016 rule) on hand-built cases."""

import numpy as np
import pytest

from engines.evaluate.matching import Matching, jaccard, match_localizations


def test_greedy_takes_nearest_pair_first():
    # pred 0 is 100 nm from truth 0 and 120 nm from truth 1; pred 1 is 10 nm from truth 0.
    # Nearest first pairs (1, 0) at 10 nm, then pred 0 falls back to truth 1.
    true = np.array([[1000.0, 1000, 500], [880.0, 1000, 500]])
    pred = np.array([[1100.0, 1000, 500], [1010.0, 1000, 500]])
    m = match_localizations(pred, true)
    assert m.pred_idx.tolist() == [1, 0]
    assert m.true_idx.tolist() == [0, 1]
    np.testing.assert_allclose(m.delta_nm, [[10, 0, 0], [220, 0, 0]])
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)


def test_greedy_is_not_optimal_assignment():
    # Greedy takes the 50 nm pair (p0, t0); p1 is then 260 nm from t1 -> unmatched,
    # although an optimal assignment (p0-t1, p1-t0) would match both.
    true = np.array([[0.0, 0, 0], [200.0, 0, 0]])
    pred = np.array([[50.0, 0, 0], [-60.0, 0, 0]])
    m = match_localizations(pred, true)
    assert (m.tp, m.fp, m.fn) == (1, 1, 1)
    assert m.pred_idx.tolist() == [0] and m.true_idx.tolist() == [0]


def test_one_to_one():
    true = np.array([[0.0, 0, 0]])
    pred = np.array([[10.0, 0, 0], [20.0, 0, 0], [-5.0, 0, 0]])
    m = match_localizations(pred, true)
    assert (m.tp, m.fp, m.fn) == (1, 2, 0)
    assert m.pred_idx.tolist() == [2]
    assert m.jaccard == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("offset", "matched"),
    [
        ((250.0, 0, 0), True),  # lateral edge is inclusive
        ((250.01, 0, 0), False),
        ((150.0, 200.0, 0), True),  # 250 nm laterally, diagonal
        ((150.0, 201.0, 0), False),
        ((0, 0, 500.0), True),  # axial edge inclusive
        ((0, 0, -500.5), False),
        ((249.0, 0, 499.0), True),  # both near the limit: per-axis rule, not a 3D sphere
    ],
)
def test_tolerance_edges(offset, matched):
    true = np.array([[5000.0, 5000, 800]])
    m = match_localizations(true + np.array(offset), true)
    assert m.tp == int(matched)


def test_axial_tolerance_is_separate():
    true = np.array([[0.0, 0, 0]])
    pred = np.array([[0.0, 0, 600.0]])
    assert match_localizations(pred, true).tp == 0
    assert match_localizations(pred, true, axial_nm=700.0).tp == 1
    assert match_localizations(np.array([[100.0, 0, 0]]), true, lateral_nm=50.0).tp == 0


def test_empty_inputs_and_concat():
    none = match_localizations(np.zeros((0, 3)), np.array([[1.0, 2, 3]]))
    assert (none.tp, none.fp, none.fn) == (0, 0, 1)
    only_fp = match_localizations(np.array([[1.0, 2, 3]]), np.zeros((0, 3)))
    assert (only_fp.tp, only_fp.fp, only_fp.fn) == (0, 1, 0)
    both = match_localizations([], [])
    assert both.jaccard == 1.0
    hit = match_localizations(np.array([[1.0, 2, 3]]), np.array([[1.0, 2, 3]]))
    pooled = Matching.concat([none, only_fp, hit])
    assert (pooled.tp, pooled.fp, pooled.fn) == (1, 1, 1)
    assert pooled.delta_nm.shape == (1, 3)
    assert jaccard(8, 1, 1) == pytest.approx(0.8)


def test_bad_shape_names_the_argument():
    with pytest.raises(ValueError, match="pred_xyz_nm"):
        match_localizations(np.zeros((3, 2)), np.zeros((1, 3)))
