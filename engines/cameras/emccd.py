"""EMCCD: an electron-multiplying register with excess noise before read-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engines.cameras.base import register
from engines.cameras.photon import PhotonCamera

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

    from engines.config import NoiseParams


@register
@dataclass(frozen=True, kw_only=True)
class EMCCD(PhotonCamera):
    """An EMCCD camera with mean EM gain ``em_gain`` (output per photo-electron)."""

    mode = "emccd"
    excess_factor = 2.0
    crlb_method = "EMCCD: shot noise x excess factor 2 + read noise + ADU step"

    em_gain: float

    @classmethod
    def from_settings(cls, noise: NoiseParams) -> Self:
        return cls(
            background_photons=noise.background_photons,
            qe=noise.qe,
            em_gain=noise.em_gain,
            e_per_adu=noise.e_per_adu,
            baseline_adu=noise.baseline_adu,
            read_noise_e=noise.read_noise_e,
        )

    @property
    def gain(self) -> float:
        return self.em_gain

    def amplify(self, electrons: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # EM register: gamma-distributed gain, excess noise factor F^2 = 2; the Gaussian
        # approximation of that Gamma keeps the draw on our generator.
        noise = torch.randn(electrons.shape, generator=generator, device=electrons.device)
        amplified = self.em_gain * electrons + self.em_gain * torch.sqrt(electrons) * noise
        return amplified.clamp_min(0.0)
