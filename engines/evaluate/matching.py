"""Localization <-> ground-truth matching (SMLM challenge 2016 rule).

Candidate pairs lie inside the lateral tolerance (distance in x-y) AND the axial
tolerance (|dz|); they are taken greedily, nearest first (3D Euclidean distance), each
localization and each molecule at most once. Unmatched localizations are false
positives, unmatched molecules false negatives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

LATERAL_TOL_NM = 250.0
AXIAL_TOL_NM = 500.0


@dataclass(frozen=True)
class Matching:
    """One-to-one matching of ``n_pred`` localizations with ``n_true`` molecules.

    Attributes:
        pred_idx: ``(TP,)`` int64 indices into the localizations, in matching order.
        true_idx: ``(TP,)`` int64 indices into the ground truth, paired with ``pred_idx``.
        delta_nm: ``(TP, 3)`` float64 errors prediction - truth (x, y, z), nm.
        n_pred, n_true: numbers of localizations and molecules.
    """

    pred_idx: np.ndarray
    true_idx: np.ndarray
    delta_nm: np.ndarray
    n_pred: int
    n_true: int

    @property
    def tp(self) -> int:
        return int(self.pred_idx.shape[0])

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    @property
    def jaccard(self) -> float:
        """TP / (TP + FP + FN); 1.0 when there is nothing to find and nothing found."""
        return jaccard(self.tp, self.fp, self.fn)

    @classmethod
    def concat(cls, parts: Iterable[Matching]) -> Matching:
        """Pool matchings of several frames (indices stay per frame; counts add up)."""
        parts = list(parts)
        if not parts:
            return _empty(0, 0)
        return cls(
            np.concatenate([p.pred_idx for p in parts]),
            np.concatenate([p.true_idx for p in parts]),
            np.concatenate([p.delta_nm for p in parts]).reshape(-1, 3),
            sum(p.n_pred for p in parts),
            sum(p.n_true for p in parts),
        )


def jaccard(tp: int, fp: int, fn: int) -> float:
    """Jaccard index TP / (TP + FP + FN), 1.0 for an empty problem."""
    total = tp + fp + fn
    return 1.0 if total == 0 else tp / total


def _empty(n_pred: int, n_true: int) -> Matching:
    return Matching(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), n_pred, n_true)


def _as_xyz(arr: np.ndarray, name: str) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float64)
    if out.size == 0:
        return out.reshape(0, 3)
    if out.ndim != 2 or out.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3) in nm, got {out.shape}")
    return out


def match_localizations(
    pred_xyz_nm: np.ndarray,
    true_xyz_nm: np.ndarray,
    *,
    lateral_nm: float = LATERAL_TOL_NM,
    axial_nm: float = AXIAL_TOL_NM,
) -> Matching:
    """Greedy nearest-first one-to-one matching of one frame.

    Args:
        pred_xyz_nm: ``(N, 3)`` localizations (x, y, z), nm.
        true_xyz_nm: ``(M, 3)`` ground-truth molecules (x, y, z), nm.
        lateral_nm: a pair needs lateral distance <= this (inclusive).
        axial_nm: a pair needs |dz| <= this (inclusive).
    """
    if lateral_nm < 0 or axial_nm < 0:
        raise ValueError(f"tolerances must be >= 0, got lateral {lateral_nm}, axial {axial_nm}")
    pred = _as_xyz(pred_xyz_nm, "pred_xyz_nm")
    true = _as_xyz(true_xyz_nm, "true_xyz_nm")
    n_pred, n_true = pred.shape[0], true.shape[0]
    if n_pred == 0 or n_true == 0:
        return _empty(n_pred, n_true)
    diff = pred[:, None, :] - true[None, :, :]  # (N, M, 3)
    lat2 = diff[..., 0] ** 2 + diff[..., 1] ** 2
    ok = (lat2 <= lateral_nm**2) & (np.abs(diff[..., 2]) <= axial_nm)
    pi, ti = np.nonzero(ok)
    d2 = lat2[pi, ti] + diff[pi, ti, 2] ** 2
    # stable sort: equal distances keep (pred, true) index order, so results are reproducible
    order = np.argsort(d2, kind="stable")
    used_p = np.zeros(n_pred, bool)
    used_t = np.zeros(n_true, bool)
    keep_p: list[int] = []
    keep_t: list[int] = []
    for p, t in zip(pi[order].tolist(), ti[order].tolist(), strict=True):
        if used_p[p] or used_t[t]:
            continue
        used_p[p] = used_t[t] = True
        keep_p.append(p)
        keep_t.append(t)
    p_arr = np.asarray(keep_p, np.int64)
    t_arr = np.asarray(keep_t, np.int64)
    return Matching(p_arr, t_arr, pred[p_arr] - true[t_arr], n_pred, n_true)
