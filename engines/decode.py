"""Network output -> localizations, on whatever device the output lives on.

Threshold tau on the voxel confidence gives one localization per positive voxel
(paper Sec. 4.2); its position is the voxel corner plus the regressed sub-voxel offset
(:func:`engines.geometry.voxel_to_nm`).
"""

from __future__ import annotations

import torch

from engines.config import Geometry
from engines.geometry import voxel_to_nm


def decode(
    output: torch.Tensor, threshold: float, *, px_nm: float, dz_nm: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather localizations from a network output.

    Args:
        output: ``(B, P, 4, H, W)`` sigmoid outputs (confidence, zeta x, y, z).
        threshold: voxels with confidence > threshold are localizations.

    Returns:
        ``(frame (N,) int64, xyz_nm (N, 3) float32, confidence (N,) float32)`` on the
        output's device; rows are ordered by frame, then plane, row, column.
    """
    conf = output[:, :, 0]
    b, k, i, j = torch.nonzero(conf > threshold, as_tuple=True)
    zeta = output[b, k, 1:, i, j]
    grid = Geometry.model_validate({"px_nm": px_nm, "dz_nm": dz_nm})
    xyz = voxel_to_nm(torch.stack([k, i, j], dim=-1), zeta, grid)
    return b, xyz.float(), conf[b, k, i, j].float()
