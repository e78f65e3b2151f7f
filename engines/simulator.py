"""Frames drawn from the paper's observation model (Sec. 2, Eq. 3), vectorised in torch.

One call draws a whole batch: molecule positions, weights and per-plane drift, renders
the separable Gaussian PSF of every plane, adds noise (the settings' camera, engines.cameras) and
builds the voxel targets of Sec. 3.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.config import SimSettings
from engines.geometry import nm_to_voxel
from engines.psf_model import PSFModel, psf_model_for


@dataclass
class SimBatch:
    """One simulated batch.

    Attributes:
        frames: ``(B, P, H, W)`` float32 in frame units (intensity, or ADU in camera mode).
        xyz_nm: ``(B, M, 3)`` float32 positions (x, y, z) in the reference plane, nm.
        valid: ``(B, M)`` bool, True for molecules inside the frame (the ground truth);
            padding and molecules in the margin outside the frame are False.
        weights: ``(B, M)`` float32 brightness weights (0 for padding).
        drift_nm: ``(B, P, 2)`` float32 lateral drift per plane vs plane 0, nm.
        targets: ``(B, P, 4, H, W)`` float32: label, zeta_x, zeta_y, zeta_z per voxel.
    """

    frames: torch.Tensor
    xyz_nm: torch.Tensor
    valid: torch.Tensor
    weights: torch.Tensor
    drift_nm: torch.Tensor
    targets: torch.Tensor

    def molecules(self, b: int) -> torch.Tensor:
        """Ground-truth ``(N, 3)`` positions of frame ``b``, nm."""
        return self.xyz_nm[b][self.valid[b]]


class Simulator:
    """Draws :class:`SimBatch` es for one :class:`SimSettings`."""

    def __init__(
        self,
        settings: SimSettings,
        *,
        seed: int = 0,
        device: str = "cpu",
        psf: PSFModel | None = None,
    ) -> None:
        """``psf``: render frames with this PSF instead of the settings' own (e.g. a
        vectorial microscope for test frames)."""
        self.settings = settings
        self.psf: PSFModel = psf or psf_model_for(settings)
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        self.camera = settings.noise.to_camera()

    def _uniform(self, *shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        u = torch.rand(*shape, generator=self.gen, device=self.device)
        return lo + (hi - lo) * u

    def sample(
        self,
        batch: int,
        molecules: int | tuple[int, int],
        *,
        height: int | None = None,
        width: int | None = None,
        drift: bool = True,
    ) -> SimBatch:
        """Draw ``batch`` frames.

        Args:
            molecules: molecules per frame inside the field of view, or an inclusive
                ``(lo, hi)`` range drawn uniformly per frame. Molecules in the margin
                are added at the same density.
            height, width: frame size in pixels (default: the settings' geometry).
            drift: draw per-plane lateral drift up to ``drift_max_nm``.
        """
        s = self.settings
        g = s.geometry
        h = height or g.height
        w = width or g.width
        lo, hi = (molecules, molecules) if isinstance(molecules, int) else molecules
        counts = torch.randint(lo, hi + 1, (batch,), generator=self.gen, device=self.device)
        m = s.margin_px
        area_ratio = ((h + 2 * m) * (w + 2 * m)) / (h * w)
        totals = torch.round(counts.float() * area_ratio).long() if m else counts
        m_max = max(int(totals.max().item()), 1)

        slot = torch.arange(m_max, device=self.device)[None, :]
        present = slot < totals[:, None]
        x = self._uniform(batch, m_max, lo=-m * g.px_nm, hi=(w + m) * g.px_nm)
        y = self._uniform(batch, m_max, lo=-m * g.px_nm, hi=(h + m) * g.px_nm)
        z = self._uniform(batch, m_max, lo=0.0, hi=g.depth_nm)
        xyz = torch.stack([x, y, z], dim=-1)
        weights = self._uniform(batch, m_max, lo=s.weight_min, hi=s.weight_max) * present
        return self.render(xyz, weights, present, height=h, width=w, drift=drift)

    def render(
        self,
        xyz: torch.Tensor,
        weights: torch.Tensor,
        present: torch.Tensor,
        *,
        height: int | None = None,
        width: int | None = None,
        drift: bool = True,
    ) -> SimBatch:
        """Frames of molecules at given positions (e.g. a fixed sample that blinks).

        Args:
            xyz: ``(B, M, 3)`` float32 positions, nm (frame + margin).
            weights: ``(B, M)`` float32 brightness weights, 0 where ``present`` is False.
            present: ``(B, M)`` bool, False for padding.
            drift: draw per-plane lateral drift up to ``drift_max_nm``.
        """
        s = self.settings
        g = s.geometry
        h = height or g.height
        w = width or g.width
        batch = xyz.shape[0]
        x, y = xyz[..., 0], xyz[..., 1]
        inside = (x >= 0) & (x < w * g.px_nm) & (y >= 0) & (y < h * g.px_nm)
        valid = present & inside

        drift_nm = torch.zeros(batch, g.planes, 2, device=self.device)
        if drift and s.drift_max_nm > 0:
            drift_nm[:, 1:] = self._uniform(
                batch, g.planes - 1, 2, lo=-s.drift_max_nm, hi=s.drift_max_nm
            )

        clean = self.psf.render(xyz, weights, drift_nm, height=h, width=w)
        frames = self.add_noise(clean + s.psf.b)
        targets = self.targets(xyz, valid, g.planes, h, w)
        return SimBatch(frames, xyz, valid, weights, drift_nm, targets)

    def add_noise(self, intensity: torch.Tensor) -> torch.Tensor:
        """Noisy frame from a noiseless intensity (background ``b`` included)."""
        return self.camera.sample(intensity, self.gen)

    def targets(
        self, xyz_nm: torch.Tensor, valid: torch.Tensor, planes: int, height: int, width: int
    ) -> torch.Tensor:
        """Voxel targets ``(B, P, 4, H, W)``: label and sub-voxel (x, y, z) of Sec. 3.2.

        Voxels holding two molecules keep one of them (the paper assumes at most one).
        """
        batch = xyz_nm.shape[0]
        out = torch.zeros(batch, planes, 4, height, width, device=xyz_nm.device)
        idx, zeta = nm_to_voxel(xyz_nm, self.settings.geometry)
        b_idx = torch.arange(batch, device=xyz_nm.device)[:, None].expand_as(valid)[valid]
        k, i, j = idx[valid].unbind(-1)
        k = k.clamp(0, planes - 1)
        vals = torch.cat([torch.ones_like(zeta[valid][:, :1]), zeta[valid]], dim=-1)
        for q in range(4):
            out[b_idx, k, q, i, j] = vals[:, q]
        return out
