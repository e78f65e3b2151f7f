"""The paper's noise (Table 3): additive Poisson + Gaussian on the noiseless intensity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from engines.cameras.base import Camera, register

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

    from engines.config import NoiseParams


def additive_noise_fisher(poisson_rate: float, gaussian_var: float) -> float:
    """Location Fisher information E[(f'/f)^2] of f = Poisson(rate) * N(0, var)."""
    from scipy.integrate import trapezoid  # numpy < 2 has no np.trapezoid; slow to import

    if gaussian_var <= 0:
        raise ValueError(
            "the CRLB of paper-mode noise needs gaussian_var > 0 (pure Poisson noise on a "
            f"continuous shift has unbounded information), got {gaussian_var}"
        )
    sd = math.sqrt(gaussian_var)
    n_max = int(poisson_rate + 12 * math.sqrt(poisson_rate) + 12) if poisson_rate > 0 else 0
    n = np.arange(n_max + 1, dtype=np.float64)
    if poisson_rate > 0:
        log_fact = np.array([math.lgamma(k + 1.0) for k in n])
        p = np.exp(n * math.log(poisson_rate) - poisson_rate - log_fact)
    else:
        p = np.ones(1)
    y = np.linspace(-12 * sd, n_max + 12 * sd, 20_001)
    u = (y[:, None] - n[None, :]) / sd
    phi = np.exp(-0.5 * u**2) / (sd * math.sqrt(2 * math.pi))
    f = phi @ p
    df = -(phi * u / sd) @ p
    integrand = np.where(f > 1e-300, df**2 / np.maximum(f, 1e-300), 0.0)
    return float(trapezoid(integrand, y))


@register
@dataclass(frozen=True, kw_only=True)
class PaperNoise(Camera):
    """Paper Eq. 3 with Table 3's noise: y = mu + Poisson(``poisson_rate``) +
    N(0, ``gaussian_var``), in arbitrary intensity units, float32 frames.

    The noise does not depend on mu, so y is a location family: J_pix is the exact
    location Fisher information of the Poisson(lambda) * N(0, sigma^2) density, integrated
    numerically (a little above 1 / (lambda + sigma^2)). With ``shot_noise`` it is the
    physical reading of Eq. 3, where the Poisson term were shot noise of signal +
    background, in the shifted-Poisson approximation J_pix = 1 / (mu + lambda + sigma^2).
    """

    mode = "paper"
    frame_dtype = np.dtype(np.float32)
    bead_brightness = 20.0
    additive_noise = True
    crlb_method = (
        "paper noise as simulated: additive Poisson(lambda) + Gaussian(sigma^2), "
        "exact location Fisher information"
    )

    poisson_rate: float
    gaussian_var: float

    @classmethod
    def from_settings(cls, noise: NoiseParams) -> Self:
        return cls(poisson_rate=noise.poisson_rate, gaussian_var=noise.gaussian_var)

    def sample(self, intensity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rate = torch.full_like(intensity, self.poisson_rate)
        shot = torch.poisson(rate, generator=generator) if self.poisson_rate > 0 else 0.0
        gauss = torch.randn(intensity.shape, generator=generator, device=intensity.device)
        return intensity + shot + math.sqrt(self.gaussian_var) * gauss

    def expected_background(self, psf_b: float) -> float:
        return psf_b + self.poisson_rate

    def intensity_scale(self) -> float:
        return 1.0

    def pixel_information(self, mu: torch.Tensor, *, shot_noise: bool = False) -> torch.Tensor:
        if shot_noise:
            return 1.0 / (mu + self.poisson_rate + self.gaussian_var).clamp_min(1e-12)
        j = additive_noise_fisher(self.poisson_rate, self.gaussian_var)
        return torch.full_like(mu, j)
