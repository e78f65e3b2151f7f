"""The voxel Jaccard ceiling: an ideal localizer at the CRLB, placed in the voxel grid."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from engines.config import NoiseParams, PSFParams, SimSettings
from engines.evaluate.crlb import (
    fisher_information,
    random_molecules,
    voxel_jaccard_ceiling,
)

OWN_MICROSCOPE_PSF = PSFParams(
    a_prime=5e7, b=0.0285, r0_nm=149.7, d_nm=301.4, a3=0.00124, b4=0.0120
)
EMCCD = NoiseParams(
    mode="emccd",
    qe=0.9,
    em_gain=150,
    e_per_adu=10.0,
    baseline_adu=200,
    read_noise_e=40,
    background_photons=10,
)


def _stay_probability(x: float, sigma: float, size: float) -> float:
    """P(x + N(0, sigma^2) stays in the voxel [k size, (k + 1) size) that holds x)."""
    r = x % size
    s = sigma * math.sqrt(2)
    return 0.5 * (math.erf((size - r) / s) + math.erf(r / s))


def test_ceiling_matches_the_per_axis_hand_value():
    """Monte Carlo vs the product of 1-D stay probabilities from each molecule's CRLB."""
    s = SimSettings()
    samples = 60
    got = voxel_jaccard_ceiling(s, samples=samples, draws=4000, seed=3)
    theta = random_molecules(s, samples, seed=3)
    var = torch.diagonal(torch.linalg.inv(fisher_information(theta, s)), dim1=-2, dim2=-1)
    g = s.geometry
    p = statistics.fmean(
        math.prod(
            _stay_probability(x, math.sqrt(v), size)
            for x, v, size in zip(t[:3], sd[:3], (g.px_nm, g.px_nm, g.dz_nm), strict=True)
        )
        for t, sd in zip(theta.tolist(), var.tolist(), strict=True)
    )
    assert abs(got.p_same_voxel - p) < 0.005
    assert math.isclose(got.voxel_jaccard, got.p_same_voxel / (2 - got.p_same_voxel))


@pytest.mark.slow
def test_ceiling_rises_with_brightness_and_falls_with_noise():
    base = SimSettings(psf=OWN_MICROSCOPE_PSF, noise=EMCCD)
    bright = base.model_copy(update={"psf": OWN_MICROSCOPE_PSF.model_copy(update={"a_prime": 2e8})})
    noisy = base.model_copy(update={"noise": EMCCD.model_copy(update={"background_photons": 40})})
    c = {
        name: voxel_jaccard_ceiling(s, samples=150, seed=1).voxel_jaccard
        for name, s in (("base", base), ("bright", bright), ("noisy", noisy))
    }
    assert c["noisy"] < c["base"] < c["bright"] < 1


@pytest.mark.slow
def test_own_microscope_example_leaves_little_room_above_voxel_jaccard_080():
    """The docs' EMCCD example (typical dye): an ideal localizer on isolated, drift-free
    molecules reaches about 0.82, while the paper's noise model leaves room above 0.9."""
    emccd = voxel_jaccard_ceiling(
        SimSettings(psf=OWN_MICROSCOPE_PSF, noise=EMCCD), samples=1000, draws=32, seed=0
    )
    paper = voxel_jaccard_ceiling(SimSettings(), samples=1000, draws=32, seed=0)
    assert 0.79 < emccd.voxel_jaccard < 0.85 and paper.voxel_jaccard > 0.90
