"""PSF calibration from simulated bead z-stacks with a known PSF (issue 6 acceptance)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from clients.commands.options import settings_from_args
from engines.calibration.beads import simulate_bead_zstacks
from engines.calibration.psf_fit import calibrate_psf, defocus_width, plot_widths
from engines.config import Geometry, NoiseParams, PSFParams, SimSettings
from engines.errors import FormatError
from tests.calibration.conftest import noise_images

# a microscope unlike the paper's: wider in focus, steeper far from focus, planes off nominal
TRUE_PSF = PSFParams(r0_nm=150.0, b4=2 * 6.27e-3, focal_offsets_nm=(25.0, -10.0, 5.0, 40.0))
SETTINGS = SimSettings(
    geometry=Geometry(height=64, width=64), psf=TRUE_PSF, noise=NoiseParams(mode="emccd")
)
BRIGHTNESS = 2.0


@pytest.fixture(scope="module")
def zstacks():
    return simulate_bead_zstacks(SETTINGS, z_step_nm=80.0, brightness=BRIGHTNESS, seed=3)


@pytest.fixture(scope="module")
def calibration(zstacks):
    return calibrate_psf(
        zstacks.stacks,
        z_step_nm=zstacks.z_step_nm,
        geometry=SETTINGS.geometry,
        noise=SETTINGS.noise,
    )


def test_widths_within_3_percent_over_the_axial_range(zstacks, calibration):
    p = calibration.psf
    z = np.linspace(0.0, SETTINGS.geometry.depth_nm, 161)  # CONVENTIONS z, nm
    for k in range(4):
        # the fit knows the stack only in stage coordinates: the first slice is at z_nm[0]
        focal_fit = calibration.focal_stack_nm[k] + zstacks.z_nm[0]
        fitted = defocus_width(focal_fit - z, p.r0_nm, p.d_nm, p.a3, p.b4)
        true = defocus_width(
            zstacks.focal_nm[k] - z, TRUE_PSF.r0_nm, TRUE_PSF.d_nm, TRUE_PSF.a3, TRUE_PSF.b4
        )
        assert np.max(np.abs(fitted / true - 1)) < 0.03, f"plane {k}"
    assert calibration.rms_rel < 0.03


def test_parameters_and_focal_offsets(calibration):
    p = calibration.psf
    assert p.r0_nm == pytest.approx(150.0, rel=0.03)
    assert p.d_nm == pytest.approx(302.0, rel=0.05)
    assert p.a_prime == pytest.approx(BRIGHTNESS * TRUE_PSF.a_prime, rel=0.05)
    # offsets are defined up to one common shift (the stage has no absolute origin)
    true = np.array(TRUE_PSF.focal_offsets_nm)
    np.testing.assert_allclose(p.focal_offsets_nm, true - true.mean(), atol=15.0)


def test_json_is_read_by_voxloc_train(calibration, tmp_path):
    path = tmp_path / "psf.json"
    import json

    path.write_text(json.dumps(calibration.to_json()))
    args = argparse.Namespace(psf=path, camera="emccd", camera_json=None)
    settings = settings_from_args(args)
    assert settings.psf == calibration.psf
    assert settings.noise.mode == "emccd"
    assert len(settings.focal_planes_nm()) == 4


def test_plot_is_written(calibration, tmp_path):
    out = plot_widths(calibration, tmp_path / "fig2.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_beads_is_a_clear_error():
    stacks = [s.reshape(-1, 64, 64) for s in noise_images(4, shape=(20, 64, 64))]
    with pytest.raises(FormatError, match=r"plane 0: found 0 isolated bead"):
        calibrate_psf(stacks, z_step_nm=50.0, geometry=SETTINGS.geometry)


def test_one_bead_is_a_clear_error():
    one = SimSettings(geometry=Geometry(height=40, width=40))
    zs = simulate_bead_zstacks(one, z_step_nm=100.0, spacing_px=40, brightness=5.0)
    with pytest.raises(FormatError, match=r"found 1 isolated bead\(s\).*at least 3"):
        calibrate_psf(zs.stacks, z_step_nm=100.0, geometry=one.geometry)


def test_wrong_plane_count_is_a_clear_error(zstacks):
    with pytest.raises(FormatError, match="expected 4 z-stacks .* got 3"):
        calibrate_psf(zstacks.stacks[:3], z_step_nm=50.0, geometry=SETTINGS.geometry)


def test_reversed_z_step_is_a_clear_error(zstacks):
    flipped = [s[::-1] for s in zstacks.stacks]
    with pytest.raises(FormatError, match="z step sign reversed"):
        calibrate_psf(flipped, z_step_nm=50.0, geometry=SETTINGS.geometry, noise=SETTINGS.noise)
