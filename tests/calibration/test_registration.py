"""Registration from simulated beads with known affines (issue 6 acceptance)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.calibration.beads import (
    apply_affine,
    invert_affine,
    random_affines,
    simulate_registration_beads,
)
from engines.calibration.registration import affines_from_json, fit_registration
from engines.config import Geometry, SimSettings
from engines.errors import FormatError
from tests.calibration.conftest import noise_images

PX_NM = 192.0


def grid_error_nm(fitted: np.ndarray, true: np.ndarray, size: int) -> float:
    """RMS distance between where the fitted and the true affine send a grid of camera
    points spanning the whole field, nm."""
    ref = np.stack(np.meshgrid(np.linspace(0, size, 17), np.linspace(0, size, 17)), -1)
    cam = apply_affine(invert_affine(true), ref.reshape(-1, 2))
    err = np.linalg.norm(apply_affine(fitted, cam) - apply_affine(true, cam), axis=1)
    return float(np.sqrt(np.mean(err**2)) * PX_NM)


def test_fitted_affines_map_points_within_10nm(reg_beads):
    reg = fit_registration(reg_beads.images, px_nm=PX_NM, planes=4)
    assert [c.name for c in reg.cameras] == ["cam0", "cam1", "cam2", "cam3"]
    for k, cam in enumerate(reg.cameras):
        assert grid_error_nm(cam.affine, reg_beads.affines[k], 128) < 10.0, cam.summary()
        assert cam.rms_nm < 10.0
        assert cam.matched >= 15
    # the misalignment was real: without registration points would be off by pixels
    assert max(grid_error_nm(np.eye(2, 3), a, 128) for a in reg_beads.affines[1:]) > 5 * PX_NM


def test_spurious_beads_are_not_matched(reg_settings):
    aff = random_affines(4, height=128, width=128, seed=7)
    beads = simulate_registration_beads(
        reg_settings, aff, beads=60, spurious_frac=0.2, missing_frac=0.1, seed=7
    )
    reg = fit_registration(beads.images, px_nm=PX_NM, planes=4)
    for k, cam in enumerate(reg.cameras[1:], start=1):
        assert grid_error_nm(cam.affine, aff[k], 128) < 10.0
        assert cam.matched < cam.detected  # spurious and missing beads were left out


def test_json_is_what_the_service_accepts(reg_beads):
    reg = fit_registration(reg_beads.images, px_nm=PX_NM, planes=4)
    body = reg.to_json(gain_adu=2.5, baseline_adu=100.0)
    assert set(body) == {"cameras"}
    back = affines_from_json(body)
    for cam in reg.cameras:
        np.testing.assert_allclose(back[cam.name], cam.affine)
        assert body["cameras"][cam.name]["gain_adu"] == 2.5
    settings = pytest.importorskip("service.settings")
    for cam in body["cameras"].values():
        parsed = settings.CameraRegistration(**cam)
        np.testing.assert_allclose(np.array(parsed.affine), np.array(cam["affine"]))


def test_no_beads_is_a_clear_error():
    with pytest.raises(FormatError, match=r"camera 'cam0': found 0 bead"):
        fit_registration(noise_images(4), px_nm=PX_NM, planes=4)


def test_one_bead_is_a_clear_error():
    settings = SimSettings(geometry=Geometry(height=64, width=64))
    beads = simulate_registration_beads(
        settings,
        random_affines(4, height=64, width=64),
        beads=1,
        spurious_frac=0.0,
        missing_frac=0.0,
    )
    with pytest.raises(FormatError, match=r"found 1 bead\(s\).*need at least 6"):
        fit_registration(beads.images, px_nm=PX_NM, planes=4)


def test_wrong_camera_count_is_a_clear_error(reg_beads):
    with pytest.raises(FormatError, match="expected 4 bead images .* got 3"):
        fit_registration(reg_beads.images[:3], px_nm=PX_NM, planes=4)


def test_unrelated_camera_is_a_clear_error(reg_beads, reg_settings):
    other = simulate_registration_beads(reg_settings, reg_beads.affines, beads=80, seed=99)
    images = [reg_beads.images[0], *other.images[1:]]
    with pytest.raises(FormatError, match="match the reference camera 'cam0'"):
        fit_registration(images, px_nm=PX_NM, planes=4)
