"""Accuracy metrics: voxel confusion matrix (paper Table 4) and molecule-level statistics
(Jaccard, RMSE, bias, SMLM-challenge efficiency)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from engines.evaluate.matching import Matching, jaccard

# SMLM challenge 2016 efficiency weights, 1/nm
ALPHA_LATERAL_PER_NM = 1.0
ALPHA_AXIAL_PER_NM = 0.5


@dataclass
class VoxelConfusion:
    """Binary classification of voxels, laid out as paper Table 4."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def jaccard(self) -> float:
        return jaccard(self.tp, self.fp, self.fn)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def add(self, other: VoxelConfusion) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "jaccard": self.jaccard}


def voxel_confusion(
    confidence: torch.Tensor, labels: torch.Tensor, threshold: float
) -> VoxelConfusion:
    """Confusion matrix of ``confidence > threshold`` against the voxel labels.

    Args:
        confidence: ``(B, P, H, W)`` network confidence in [0, 1].
        labels: ``(B, P, H, W)`` target labels, 1 for a voxel holding a molecule.
    """
    if confidence.shape != labels.shape:
        raise ValueError(
            f"confidence shape {tuple(confidence.shape)} != labels shape {tuple(labels.shape)}"
        )
    pred = confidence > threshold
    true = labels > 0.5
    tp = int((pred & true).sum())
    fp = int((pred & ~true).sum())
    fn = int((~pred & true).sum())
    return VoxelConfusion(tp, fp, fn, int(pred.numel()) - tp - fp - fn)


def efficiency(jaccard_index: float, rmse_nm: float, alpha_per_nm: float) -> float:
    """SMLM challenge efficiency E = 100 - sqrt((100 - JI%)^2 + alpha^2 RMSE^2), in %."""
    return 100.0 - math.sqrt((100.0 * (1.0 - jaccard_index)) ** 2 + (alpha_per_nm * rmse_nm) ** 2)


@dataclass(frozen=True)
class MoleculeStats:
    """Molecule-level accuracy of a pooled :class:`Matching`.

    RMSE lateral is sqrt(mean(dx^2 + dy^2)) (radial, as in the SMLM challenge); axial is
    sqrt(mean(dz^2)); bias is the mean error per axis. Distances are NaN without matches.
    """

    tp: int
    fp: int
    fn: int
    jaccard: float
    rmse_lateral_nm: float
    rmse_axial_nm: float
    rmse_x_nm: float
    rmse_y_nm: float
    bias_x_nm: float
    bias_y_nm: float
    bias_z_nm: float
    efficiency_lateral: float
    efficiency_axial: float

    @classmethod
    def from_matching(cls, m: Matching) -> MoleculeStats:
        d = np.asarray(m.delta_nm, dtype=np.float64).reshape(-1, 3)
        if d.shape[0]:
            rms = np.sqrt(np.mean(d**2, axis=0))
            bias = d.mean(axis=0)
        else:
            rms = bias = np.full(3, np.nan)
        rmse_lat = float(math.hypot(rms[0], rms[1]))
        rmse_ax = float(rms[2])
        ji = m.jaccard
        return cls(
            tp=m.tp,
            fp=m.fp,
            fn=m.fn,
            jaccard=ji,
            rmse_lateral_nm=rmse_lat,
            rmse_axial_nm=rmse_ax,
            rmse_x_nm=float(rms[0]),
            rmse_y_nm=float(rms[1]),
            bias_x_nm=float(bias[0]),
            bias_y_nm=float(bias[1]),
            bias_z_nm=float(bias[2]),
            efficiency_lateral=efficiency(ji, rmse_lat, ALPHA_LATERAL_PER_NM),
            efficiency_axial=efficiency(ji, rmse_ax, ALPHA_AXIAL_PER_NM),
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
