"""sCMOS: shot noise, read noise and ADU conversion, no gain stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engines.cameras.base import register
from engines.cameras.photon import PhotonCamera

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

    from engines.config import NoiseParams


@register
@dataclass(frozen=True, kw_only=True)
class SCMOS(PhotonCamera):
    """An sCMOS camera (uniform gain and read noise over the chip)."""

    mode = "scmos"
    crlb_method = "sCMOS: shot noise + read noise + ADU step"

    @classmethod
    def from_settings(cls, noise: NoiseParams) -> Self:
        return cls(
            background_photons=noise.background_photons,
            qe=noise.qe,
            e_per_adu=noise.e_per_adu,
            baseline_adu=noise.baseline_adu,
            read_noise_e=noise.read_noise_e,
        )
