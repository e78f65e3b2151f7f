"""What EMCCD and sCMOS cameras share: photons -> electrons -> ADU, uint16 frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from engines.cameras.base import Camera

ADU_MAX = float(np.iinfo(np.uint16).max)


@dataclass(frozen=True, kw_only=True)
class PhotonCamera(Camera):
    """A real camera: the PSF intensity is read as expected photons.

    Shot noise on signal + ``background_photons``, quantum efficiency ``qe``, the
    subclass's amplification (:meth:`amplify`), ``read_noise_e``, conversion to ADU at
    ``e_per_adu`` on a ``baseline_adu``, rounding and clipping to uint16.

    J_pix, in photons: qe^2 / (F^2 qe (mu + bg) + (read / G)^2 + q^2 / 12), with the
    excess noise factor F^2, gain G and the ADU step q in input electrons.
    """

    frame_dtype = np.dtype(np.uint16)
    bead_brightness = 4.0
    excess_factor: ClassVar[float] = 1.0
    """F^2, the variance the amplification adds per input electron, over Poisson."""

    background_photons: float
    qe: float
    e_per_adu: float
    baseline_adu: float
    read_noise_e: float

    @property
    def gain(self) -> float:
        """Mean output electrons per photo-electron."""
        return 1.0

    def amplify(self, electrons: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Electrons after the camera's gain stage (none here)."""
        return electrons

    def sample(self, intensity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        photons = intensity + self.background_photons
        electrons = torch.poisson(photons * self.qe, generator=generator)
        electrons = self.amplify(electrons, generator)
        read = self.read_noise_e * torch.randn(
            electrons.shape, generator=generator, device=electrons.device
        )
        adu = torch.round(self.baseline_adu + (electrons + read) / self.e_per_adu)
        return adu.clamp(0.0, ADU_MAX)

    def expected_background(self, psf_b: float) -> float:
        photons = psf_b + self.background_photons
        return self.baseline_adu + photons * self.qe * self.gain / self.e_per_adu

    def intensity_scale(self) -> float:
        """ADU per photon."""
        return self.qe * self.gain / self.e_per_adu

    def zero_level(self) -> float:
        return self.baseline_adu

    def pixel_information(self, mu: torch.Tensor, *, shot_noise: bool = False) -> torch.Tensor:
        step_e = self.e_per_adu / self.gain  # ADU quantisation step in input electrons
        var_e = (
            self.excess_factor * self.qe * (mu + self.background_photons)
            + (self.read_noise_e / self.gain) ** 2
            + step_e**2 / 12.0
        )
        return self.qe**2 / var_e.clamp_min(1e-12)
