"""The paper's multi-plane Gaussian PSF (Sec. 2.2, Eqs. 4-7).

Functions take torch tensors (any shape, broadcasting) so the simulator stays vectorised;
``defocus`` is the axial distance between the focal plane and the molecule, nm.
"""

from __future__ import annotations

import math

import torch

from engines.config import PSFParams


def width_nm(defocus_nm: torch.Tensor, psf: PSFParams) -> torch.Tensor:
    """Defocus curve r(x) of Eq. 5: PSF standard deviation, nm."""
    u = defocus_nm / psf.d_nm
    return psf.r0_nm * torch.sqrt(1.0 + u**2 + psf.a3 * u**3 + psf.b4 * u**4)


def peak(defocus_nm: torch.Tensor, psf: PSFParams) -> torch.Tensor:
    """Peak intensity a(x) = a' / (2 pi r(x)^2) of Eq. 6."""
    r = width_nm(defocus_nm, psf)
    return psf.a_prime / (2.0 * math.pi * r**2)


def render_planes(
    xyz_nm: torch.Tensor,
    weights: torch.Tensor,
    drift_nm: torch.Tensor,
    focal_z_nm: torch.Tensor,
    *,
    px_nm: float,
    height: int,
    width: int,
    psf: PSFParams,
) -> torch.Tensor:
    """Noiseless intensity of Eq. 3 (without b), point-sampled at pixel centres.

    Args:
        xyz_nm: ``(B, M, 3)`` molecule positions in the reference frame, nm.
        weights: ``(B, M)`` molecule weights; 0 marks padding.
        drift_nm: ``(B, P, 2)`` lateral (x, y) drift of each plane relative to plane 0;
            by Eq. 7 a molecule appears in plane k at ``xy + drift[k]``.
        focal_z_nm: ``(P,)`` focal position of each plane, nm.

    Returns:
        ``(B, P, height, width)`` float32 intensity.
    """
    dtype = xyz_nm.dtype
    dev = xyz_nm.device
    cols = (torch.arange(width, device=dev, dtype=dtype) + 0.5) * px_nm
    rows = (torch.arange(height, device=dev, dtype=dtype) + 0.5) * px_nm
    # (B, M, P): defocus of every molecule in every plane
    defocus = focal_z_nm.to(dev, dtype)[None, None, :] - xyz_nm[..., 2:3]
    r = width_nm(defocus, psf)
    amp = weights[..., None] * psf.a_prime / (2.0 * math.pi * r**2)
    mx = xyz_nm[..., 0:1] + drift_nm[:, None, :, 0]  # (B, M, P)
    my = xyz_nm[..., 1:2] + drift_nm[:, None, :, 1]
    inv = 1.0 / (2.0 * r**2)
    gx = torch.exp(-((cols[None, None, None, :] - mx[..., None]) ** 2) * inv[..., None])
    gy = torch.exp(-((rows[None, None, None, :] - my[..., None]) ** 2) * inv[..., None])
    # separable Gaussian: sum_m amp * gy (x) gx
    return torch.einsum("bmp,bmph,bmpw->bphw", amp, gy, gx)
