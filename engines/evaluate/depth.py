"""Axial accuracy by depth: z bias, RMSE and recall per depth bin (issue 12).

A model trained on the wrong PSF is wrong in z in a depth-dependent way (e.g. -155 nm in
the top 200 nm, -84 nm overall): one overall bias hides that. Molecules are binned by their
true z; the axial RMSE is also given with the constant offset removed, the figure a user
who re-zeroes the stage would see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BIN_NM = 200.0


@dataclass
class DepthStats:
    """Accumulates matched axial errors and all true depths of a test set."""

    depth_nm: float
    bin_nm: float = BIN_NM
    _true_z: list[np.ndarray] = field(default_factory=list)
    _matched_z: list[np.ndarray] = field(default_factory=list)
    _dz: list[np.ndarray] = field(default_factory=list)

    def add(self, true_z_nm: np.ndarray, matched_true_z_nm: np.ndarray, dz_nm: np.ndarray) -> None:
        """One frame: every molecule's true z, and the true z and z error of the matched."""
        self._true_z.append(np.asarray(true_z_nm, dtype=np.float64).ravel())
        self._matched_z.append(np.asarray(matched_true_z_nm, dtype=np.float64).ravel())
        self._dz.append(np.asarray(dz_nm, dtype=np.float64).ravel())

    def to_dict(self) -> dict[str, Any]:
        true_z = _cat(self._true_z)
        mz, dz = _cat(self._matched_z), _cat(self._dz)
        edges = np.arange(0.0, self.depth_nm + self.bin_nm / 2, self.bin_nm)
        bins = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (mz >= lo) & (mz < hi)
            n_true = int(((true_z >= lo) & (true_z < hi)).sum())
            bins.append(
                {
                    "z_lo_nm": float(lo),
                    "z_hi_nm": float(hi),
                    "matched": int(sel.sum()),
                    "recall": int(sel.sum()) / n_true if n_true else math.nan,
                    "bias_z_nm": _mean(dz[sel]),
                    "rmse_z_nm": _rms(dz[sel]),
                }
            )
        bias = _mean(dz)
        return {
            "bin_nm": self.bin_nm,
            "bias_z_nm": bias,
            "rmse_z_nm": _rms(dz),
            "rmse_z_offset_removed_nm": _rms(dz - bias) if dz.size else math.nan,
            "max_abs_bin_bias_nm": max(
                (abs(b["bias_z_nm"]) for b in bins if math.isfinite(b["bias_z_nm"])),
                default=math.nan,
            ),
            "bins": bins,
        }


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def _mean(v: np.ndarray) -> float:
    return float(v.mean()) if v.size else math.nan


def _rms(v: np.ndarray) -> float:
    return float(np.sqrt(np.mean(v**2))) if v.size else math.nan


def depth_lines(stats: dict[str, Any]) -> list[str]:
    """Printed table of :meth:`DepthStats.to_dict`."""
    lines = [
        f"  z by depth (bins of {stats['bin_nm']:g} nm): bias {stats['bias_z_nm']:+.1f} nm, "
        f"axial RMSE {stats['rmse_z_nm']:.1f} nm, {stats['rmse_z_offset_removed_nm']:.1f} nm "
        "with the constant offset removed",
        "    z range [nm]   matched  recall  bias z  RMSE z",
    ]
    for b in stats["bins"]:
        lines.append(
            f"    {b['z_lo_nm']:5.0f}-{b['z_hi_nm']:<5.0f}  {b['matched']:>8d}  "
            f"{b['recall']:6.3f}  {b['bias_z_nm']:+6.1f}  {b['rmse_z_nm']:6.1f}"
        )
    return lines
