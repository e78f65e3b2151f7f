"""nm <-> voxel conversions (CONVENTIONS.md "Geometry and units").

The centre of pixel (row i, col j) is at x = (j + 0.5) * px, y = (i + 0.5) * px; plane k
covers z in [k * dz, (k + 1) * dz). The sub-voxel coordinate zeta in [0, 1) of paper
Sec. 3.2 is the position inside the voxel relative to its lower corner.
"""

from __future__ import annotations

import torch

from engines.config import Geometry

# molecule densities are given per 64x64 px frame, as in the paper (Table 3)
REFERENCE_AREA_PX = 64 * 64


def nm_to_voxel(xyz_nm: torch.Tensor, geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions into voxel indices and sub-voxel coordinates.

    Args:
        xyz_nm: ``(..., 3)`` float positions (x, y, z), nm.

    Returns:
        ``(idx, zeta)``: ``(..., 3)`` int64 voxel indices ordered (plane k, row i, col j)
        and ``(..., 3)`` float sub-voxel coordinates ordered (x, y, z) in [0, 1).
    """
    scaled = torch.stack(
        [xyz_nm[..., 0] / geom.px_nm, xyz_nm[..., 1] / geom.px_nm, xyz_nm[..., 2] / geom.dz_nm],
        dim=-1,
    )
    floor = torch.floor(scaled)
    zeta = scaled - floor
    j, i, k = floor.long().unbind(-1)
    return torch.stack([k, i, j], dim=-1), zeta


def voxel_to_nm(idx: torch.Tensor, zeta: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Inverse of :func:`nm_to_voxel`: (k, i, j) indices + zeta, both ``(..., 3)``, -> nm."""
    k, i, j = idx.to(zeta.dtype).unbind(-1)
    return torch.stack(
        [
            (j + zeta[..., 0]) * geom.px_nm,
            (i + zeta[..., 1]) * geom.px_nm,
            (k + zeta[..., 2]) * geom.dz_nm,
        ],
        dim=-1,
    )
