"""Cramer-Rao bound sanity: derivatives, noise information, scaling, and a hand estimate."""

import math

import pytest
import torch

from engines.config import Geometry, NoiseParams, PSFParams, SimSettings
from engines.evaluate.crlb import (
    additive_noise_fisher,
    average_crlb,
    bound_from_theta,
    mean_jacobian,
    random_molecules,
)

PAPER = SimSettings()


def with_(settings: SimSettings, **parts) -> SimSettings:
    return settings.model_copy(update=parts)


def test_noise_information_gaussian_and_poisson_gaussian():
    assert additive_noise_fisher(0.0, 9.0) == pytest.approx(1 / 9, rel=1e-6)
    j = additive_noise_fisher(10.0, 9.0)
    # Poisson(10) + N(0, 9): variance 19; for a location family J >= 1/variance, and
    # adding Poisson noise can only lose information against the Gaussian alone
    assert 1 / 19 <= j < 1 / 9
    assert j == pytest.approx(1 / 19, rel=0.03)  # nearly Gaussian at these rates
    with pytest.raises(ValueError, match="gaussian_var"):
        additive_noise_fisher(10.0, 0.0)


@pytest.mark.slow
def test_jacobian_matches_finite_differences():
    theta = random_molecules(PAPER, 3, seed=4)
    _, jac = mean_jacobian(theta, PAPER)
    steps = (0.5, 0.5, 0.5, 1e-4)  # nm, nm, nm, weight
    for q, h in enumerate(steps):
        dt = torch.zeros_like(theta)
        dt[:, q] = h
        mu_plus, _ = mean_jacobian(theta + dt, PAPER)
        mu_minus, _ = mean_jacobian(theta - dt, PAPER)
        fd = (mu_plus - mu_minus) / (2 * h)
        assert torch.allclose(jac[q], fd, rtol=1e-4, atol=1e-6 * fd.abs().max())


@pytest.mark.slow
def test_bound_shrinks_with_brighter_molecules_and_less_noise():
    theta = random_molecules(PAPER, 40, seed=1)
    base = bound_from_theta(theta, PAPER)
    bright = bound_from_theta(theta, with_(PAPER, psf=PSFParams(a_prime=1.0e8)))
    # additive, signal-independent noise: the bound scales exactly as 1 / brightness
    assert bright.lateral_nm == pytest.approx(base.lateral_nm / 2, rel=1e-6)
    assert bright.axial_nm == pytest.approx(base.axial_nm / 2, rel=1e-6)
    quiet = bound_from_theta(theta, with_(PAPER, noise=NoiseParams(gaussian_var=1.0)))
    assert quiet.lateral_nm < base.lateral_nm and quiet.axial_nm < base.axial_nm
    shot = bound_from_theta(theta, PAPER, shot_noise=True)
    assert shot.lateral_nm > base.lateral_nm  # shot noise on the signal costs precision
    assert base.axial_nm > base.x_nm  # z is harder than x for this PSF


@pytest.mark.parametrize("mode", ["emccd", "scmos"])
def test_camera_bound_shrinks_with_photons(mode):
    dim = with_(PAPER, noise=NoiseParams(mode=mode), psf=PSFParams(a_prime=2.0e6))
    bright = with_(dim, psf=PSFParams(a_prime=8.0e6))
    a, b = average_crlb(dim, samples=30), average_crlb(bright, samples=30)
    assert b.lateral_nm < a.lateral_nm and b.axial_nm < a.axial_nm
    # shot-noise limited with background: between 1/sqrt(N) and 1/N scaling (4x photons)
    assert a.lateral_nm / 4.01 < b.lateral_nm < a.lateral_nm / 1.99


def test_emccd_excess_noise_costs_sqrt2_when_shot_noise_limited():
    def camera(mode):
        noise = NoiseParams(
            mode=mode, background_photons=0.0, read_noise_e=0.0, qe=1.0, e_per_adu=1e-3
        )
        return with_(PAPER, noise=noise, psf=PSFParams(a_prime=1.0e6))

    theta = random_molecules(PAPER, 20, seed=2)
    scmos = bound_from_theta(theta, camera("scmos"))
    emccd = bound_from_theta(theta, camera("emccd"))
    assert emccd.lateral_nm == pytest.approx(math.sqrt(2) * scmos.lateral_nm, rel=1e-3)


def test_lateral_bound_matches_hand_estimate_in_focus():
    """Photon-limited, fine pixels: sigma_x = 1 / sqrt(sum_k N_k / r_k^2) ~ r / sqrt(N)."""
    px, a_prime, weight = 30.0, 3.0e6, 1.0
    settings = SimSettings(
        geometry=Geometry(planes=2, px_nm=px, dz_nm=400.0),
        psf=PSFParams(a_prime=a_prime),
        noise=NoiseParams(
            mode="scmos", background_photons=0.0, read_noise_e=0.0, qe=1.0, e_per_adu=1e-3
        ),
    )
    window = 121
    c = window // 2
    # on a pixel centre, in focus in plane 0 (z = 200 nm), plane 1 defocused by 400 nm
    theta = torch.tensor([[(c + 0.5) * px, (c + 0.5) * px, 200.0, weight]], dtype=torch.float64)
    bound = bound_from_theta(theta, settings, window=window)

    def r_nm(defocus):  # Eq. 5 with Table 2 values
        u = defocus / 302.0
        return 133.0 * math.sqrt(1 + u**2 + 7.37e-4 * u**3 + 6.27e-3 * u**4)

    photons_per_plane = weight * a_prime / px**2  # point samples of a'/(2 pi r^2) exp(..)
    info_x = sum(photons_per_plane / r_nm(d) ** 2 for d in (0.0, 400.0))
    assert bound.x_nm == pytest.approx(1 / math.sqrt(info_x), rel=0.01)
    # and in the range of the textbook r0 / sqrt(N) for N photons in the focused plane
    n_focus = photons_per_plane
    assert 0.5 * 133.0 / math.sqrt(n_focus) < bound.x_nm < 133.0 / math.sqrt(n_focus)


def test_default_paper_bound_is_plausible():
    result = average_crlb(PAPER, samples=30, seed=0)
    assert 0.5 < result.lateral_nm < 30 and 1 < result.axial_nm < 60
    assert result.samples == 30 and "Poisson" in result.method
