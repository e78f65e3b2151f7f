"""Cramer-Rao lower bound of single-molecule localization for the simulator's PSF and noise.

Parameters of one molecule: theta = (x, y, z, w) (w, the brightness weight, is a nuisance).
The mean image mu_pk(theta) over all planes is the same multi-plane PSF the simulator
renders: the point-sampled Gaussian (engines.psf.render_planes) or a measured spline
(engines.spline_psf, derivatives of the cubic spline by forward-mode autodiff). Fisher information

    I(theta) = sum over pixels of  J_pix * grad mu grad mu^T,

with ``J_pix`` the Fisher information per unit mean shift of one pixel's noise, from the
settings' camera (:meth:`engines.cameras.Camera.pixel_information`, which gives the
formula of each noise model). For the paper's additive noise a second bound,
``shot_noise_on_signal``, is reported for the physical reading of Eq. 3 where the Poisson
term were shot noise of signal + background.

The bound is inv(I); it is averaged over random positions (sub-pixel x, y; z over the
whole depth) and weights, without drift, and reported as sqrt(mean variance).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch

from engines.cameras.paper import additive_noise_fisher as additive_noise_fisher
from engines.config import NoiseParams, SimSettings
from engines.psf import render_planes, width_nm

log = logging.getLogger(__name__)

PSF_HALF_WIDTHS = 5.0  # the window reaches this many PSF sigmas of the most defocused plane


def window_px(settings: SimSettings) -> int:
    """Odd window side, px, that holds the widest PSF of the stack to 5 sigma (a spline
    PSF: its own window)."""
    if settings.psf.spline is not None:
        from engines.psf_model import load_spline_for

        return load_spline_for(settings).roi_px
    g = settings.geometry
    planes = torch.tensor(settings.focal_planes_nm(), dtype=torch.float64)
    defocus = torch.cat([planes, planes - g.depth_nm])  # molecule at z = 0 or z = depth
    r_max = float(width_nm(defocus, settings.psf).max())
    return 2 * math.ceil(PSF_HALF_WIDTHS * r_max / g.px_nm) + 1


@dataclass(frozen=True)
class CRLBResult:
    """sqrt of the bound averaged over ``samples`` molecules, nm.

    ``lateral_nm`` is sqrt(mean(var_x + var_y)), comparable to the radial lateral RMSE.
    """

    method: str
    samples: int
    x_nm: float
    y_nm: float
    z_nm: float
    lateral_nm: float
    axial_nm: float

    def to_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def pixel_information(
    mu: torch.Tensor, noise: NoiseParams, *, shot_noise: bool = False
) -> torch.Tensor:
    """Per-pixel J_pix for mean intensity ``mu`` (PSF units, background b included)."""
    return noise.to_camera().pixel_information(mu, shot_noise=shot_noise)


def mean_jacobian(
    theta: torch.Tensor, settings: SimSettings, window: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean image and its derivatives for molecules in a local window.

    Args:
        theta: ``(N, 4)`` float64 (x, y, z in nm relative to the window origin, weight).

    Returns:
        ``mu`` ``(N, P, S, S)`` and ``jac`` ``(4, N, P, S, S)`` (d mu / d theta_q).
    """
    g = settings.geometry
    side = window or window_px(settings)
    focal = torch.tensor(settings.focal_planes_nm(), dtype=torch.float64)
    drift = torch.zeros(theta.shape[0], g.planes, 2, dtype=torch.float64)

    if settings.psf.spline is not None:
        from engines.psf_model import spline_mean_image

        def mean(t: torch.Tensor) -> torch.Tensor:
            return spline_mean_image(t, settings, side) + settings.psf.b

    else:

        def mean(t: torch.Tensor) -> torch.Tensor:
            return (
                render_planes(
                    t[:, None, :3],
                    t[:, None, 3],
                    drift,
                    focal,
                    px_nm=g.px_nm,
                    height=side,
                    width=side,
                    psf=settings.psf,
                )
                + settings.psf.b
            )

    mu = mean(theta)
    jac = []
    for q in range(4):
        tangent = torch.zeros_like(theta)
        tangent[:, q] = 1.0
        jac.append(torch.func.jvp(mean, (theta,), (tangent,))[1])
    return mu, torch.stack(jac)


def fisher_information(
    theta: torch.Tensor,
    settings: SimSettings,
    *,
    shot_noise: bool = False,
    window: int | None = None,
) -> torch.Tensor:
    """``(N, 4, 4)`` Fisher information of (x, y, z, w) for each molecule of ``theta``."""
    mu, jac = mean_jacobian(theta, settings, window)
    j_pix = pixel_information(mu, settings.noise, shot_noise=shot_noise)
    return torch.einsum("anpij,bnpij,npij->nab", jac, jac, j_pix)


def random_molecules(
    settings: SimSettings, samples: int, seed: int = 0, window: int | None = None
) -> torch.Tensor:
    """``(samples, 4)`` molecules in the window's centre pixel: sub-pixel x, y uniform,
    z uniform over the stack depth, weight uniform in [weight_min, weight_max]."""
    g = settings.geometry
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(samples, 4, generator=gen, dtype=torch.float64)
    centre = (window or window_px(settings)) // 2
    return torch.stack(
        [
            (centre + u[:, 0]) * g.px_nm,
            (centre + u[:, 1]) * g.px_nm,
            u[:, 2] * g.depth_nm,
            settings.weight_min + (settings.weight_max - settings.weight_min) * u[:, 3],
        ],
        dim=1,
    )


def bound_from_theta(
    theta: torch.Tensor,
    settings: SimSettings,
    *,
    shot_noise: bool = False,
    window: int | None = None,
) -> CRLBResult:
    """Average CRLB over the given molecules (``(N, 4)`` as in :func:`mean_jacobian`)."""
    if theta.shape[0] == 0:
        raise ValueError("the CRLB needs at least one molecule")
    info = fisher_information(
        theta.to(torch.float64), settings, shot_noise=shot_noise, window=window
    )
    var = torch.diagonal(torch.linalg.inv(info), dim1=-2, dim2=-1)  # (N, 4)
    mean_var = var.mean(dim=0)
    if not torch.isfinite(mean_var).all() or (mean_var[:3] < 0).any():
        raise ValueError("singular Fisher information: the molecule is not identifiable")
    method = settings.noise.to_camera().crlb_method
    if shot_noise:
        method = "shifted-Poisson approximation, variance mu + lambda + sigma^2"
    vx, vy, vz = (float(v) for v in mean_var[:3])
    return CRLBResult(
        method=method,
        samples=int(theta.shape[0]),
        x_nm=math.sqrt(vx),
        y_nm=math.sqrt(vy),
        z_nm=math.sqrt(vz),
        lateral_nm=math.sqrt(vx + vy),
        axial_nm=math.sqrt(vz),
    )


def average_crlb(
    settings: SimSettings, *, samples: int = 500, seed: int = 0, shot_noise: bool = False
) -> CRLBResult:
    """CRLB averaged over ``samples`` random molecules (see :func:`random_molecules`)."""
    theta = random_molecules(settings, samples, seed)
    result = bound_from_theta(theta, settings, shot_noise=shot_noise)
    log.debug("CRLB (%s): %s", result.method, result)
    return result


@dataclass(frozen=True)
class VoxelCeiling:
    """Voxel Jaccard an ideal localizer reaches: every molecule found once, estimates
    unbiased and Gaussian with the CRLB covariance.

    A molecule whose estimate leaves its voxel is one false positive and one false negative,
    so with ``p`` the probability of staying inside, Jaccard = p / (2 - p). The Bayes voxel
    decision is (asymptotically) the voxel of the efficient estimate, so no localizer does
    much better on isolated molecules; overlap and drift in dense frames only lower it.
    """

    samples: int
    draws: int
    p_same_voxel: float
    voxel_jaccard: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def voxel_jaccard_ceiling(
    settings: SimSettings, *, samples: int = 4000, draws: int = 64, seed: int = 0
) -> VoxelCeiling:
    """:class:`VoxelCeiling` over ``samples`` random molecules, ``draws`` estimates each.

    The stay probability varies a lot between molecules (z near a plane boundary, defocus),
    so many molecules matter more than many draws: 4000 x 64 puts the ceiling within
    ~0.005 (500 molecules scatter it by ~0.02).
    """
    theta = random_molecules(settings, samples, seed)
    cov = torch.linalg.inv(fisher_information(theta, settings))[:, :3, :3]
    evals, evecs = torch.linalg.eigh(cov)  # cov = V diag(l) V^T, so x = V sqrt(l) n
    if not torch.isfinite(evals).all():
        raise ValueError("singular Fisher information: the molecule is not identifiable")
    root = evecs * evals.clamp_min(0).sqrt()[:, None, :]
    gen = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(samples, draws, 3, generator=gen, dtype=torch.float64)
    estimates = theta[:, None, :3] + noise @ root.transpose(1, 2)
    g = settings.geometry
    voxel = torch.tensor([g.px_nm, g.px_nm, g.dz_nm], dtype=torch.float64)
    same = (torch.floor(estimates / voxel) == torch.floor(theta[:, None, :3] / voxel)).all(-1)
    p = float(same.double().mean())
    return VoxelCeiling(samples, draws, p, p / (2 - p))
