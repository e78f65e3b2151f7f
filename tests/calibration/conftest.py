"""Fixtures of the calibration tests: simulated bead recordings with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from engines.calibration.beads import random_affines, simulate_registration_beads
from engines.config import Geometry, SimSettings


@pytest.fixture(scope="session")
def reg_settings() -> SimSettings:
    return SimSettings(geometry=Geometry(height=128, width=128))


@pytest.fixture(scope="session", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def reg_beads(request, reg_settings):
    """Beads seen through random affines (rotation <= 2 deg, scale <= 2 %, shift <= 10 px)
    with 5 % missing and 5 % spurious beads per camera."""
    seed = request.param
    aff = random_affines(
        4, height=128, width=128, max_rotation_deg=2.0, max_scale=0.02, max_shift_px=10.0, seed=seed
    )
    return simulate_registration_beads(
        reg_settings, aff, beads=80, spurious_frac=0.05, missing_frac=0.05, seed=seed
    )


def noise_images(planes: int, shape=(3, 64, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(100 + 3 * rng.standard_normal(shape)).astype(np.float32) for _ in range(planes)]
