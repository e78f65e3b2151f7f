"""Noise statistics of the simulator (paper Table 3 mode and the camera modes)."""

from __future__ import annotations

import pytest
import torch

from engines.config import NoiseParams, SimSettings
from engines.simulator import Simulator

N = (4, 4, 128, 128)  # 262144 pixels: standard errors well below the tolerances used


def _noisy(noise: NoiseParams, level: float = 0.0, seed: int = 0) -> torch.Tensor:
    sim = Simulator(SimSettings(noise=noise), seed=seed)
    return sim.add_noise(torch.full(N, level)).double()


def test_paper_mode_poisson_plus_gaussian():
    # Poisson(lambda = 10) + N(0, sigma^2 = 9): mean 10, variance 10 + 9 = 19
    y = _noisy(NoiseParams())
    assert float(y.mean()) == pytest.approx(10.0, abs=0.05)
    assert float(y.var()) == pytest.approx(19.0, abs=0.3)
    # the noise is additive: it does not depend on the intensity (Eq. 3)
    y2 = _noisy(NoiseParams(), level=300.0, seed=1)
    assert float(y2.mean()) == pytest.approx(310.0, abs=0.05)
    assert float(y2.var()) == pytest.approx(19.0, abs=0.3)
    assert NoiseParams().expected_background(0.0) == 10.0


def test_paper_mode_noise_parameters_are_used():
    y = _noisy(NoiseParams(poisson_rate=0.0, gaussian_var=4.0))
    assert float(y.mean()) == pytest.approx(0.0, abs=0.03)
    assert float(y.var()) == pytest.approx(4.0, abs=0.08)


def test_scmos_mode_shot_and_read_noise_in_adu():
    # 100 photons * qe 0.9 = 90 e- (Poisson), read noise 2 e-, 1 e-/ADU, baseline 100:
    # mean 100 + 90 = 190 ADU, variance 90 + 2^2 + 1/12 (rounding) = 94.08
    n = NoiseParams(
        mode="scmos",
        background_photons=100.0,
        qe=0.9,
        e_per_adu=1.0,
        baseline_adu=100.0,
        read_noise_e=2.0,
    )
    y = _noisy(n)
    assert float(y.mean()) == pytest.approx(190.0, abs=0.1)
    assert float(y.var()) == pytest.approx(94.08, rel=0.02)
    assert n.expected_background(0.0) == pytest.approx(190.0)
    assert torch.equal(y, y.round()) and float(y.min()) >= 0.0


def test_emccd_mode_has_excess_noise_factor_two():
    # 10 photons * qe 0.9 = 9 e-, gain 100, 12 e-/ADU: mean 100 + 900 / 12 = 175 ADU;
    # variance 2 * gain^2 * 9 / 12^2 = 1250 (excess factor 2), + read and rounding ~0.1
    n = NoiseParams(mode="emccd")
    y = _noisy(n)
    assert float(y.mean()) == pytest.approx(175.0, abs=0.3)
    assert float(y.var()) == pytest.approx(1250.1, rel=0.03)
    assert n.expected_background(0.0) == pytest.approx(175.0)


def test_camera_mode_clips_to_uint16_range():
    n = NoiseParams(mode="scmos", e_per_adu=1.0, qe=1.0, read_noise_e=0.0)
    y = _noisy(n, level=80_000.0)
    assert float(y.max()) == 65535.0
