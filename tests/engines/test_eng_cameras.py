"""Camera noise models (engines.cameras): the built-in ones and a camera added in one file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

import numpy as np
import pytest
import tifffile
import torch
from pydantic import ValidationError

from engines.cameras import Camera, camera_modes, register
from engines.cameras.emccd import EMCCD
from engines.cameras.paper import PaperNoise
from engines.cameras.scmos import SCMOS
from engines.config import Geometry, NoiseParams, SimSettings
from engines.evaluate.crlb import average_crlb
from engines.io.simstack import SimStackConfig, simulate_stack
from engines.simulator import Simulator
from engines.train import input_normalisation


@register
@dataclass(frozen=True, kw_only=True)
class EightBitCamera(Camera):
    """Written as a new module of engines/cameras/ would be: Gaussian read noise on an
    offset, uint8 frames."""

    mode = "test-8bit"
    frame_dtype = np.dtype(np.uint8)
    bead_brightness = 1.0
    crlb_method = "test camera: Gaussian read noise"

    offset_adu: float
    read_noise_adu: float

    @classmethod
    def from_settings(cls, noise: NoiseParams) -> Self:
        return cls(offset_adu=noise.baseline_adu, read_noise_adu=math.sqrt(noise.gaussian_var))

    def sample(self, intensity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(intensity.shape, generator=generator, device=intensity.device)
        return self.offset_adu + intensity + self.read_noise_adu * noise

    def expected_background(self, psf_b: float) -> float:
        return self.offset_adu + psf_b

    def intensity_scale(self) -> float:
        return 1.0

    def pixel_information(self, mu: torch.Tensor, *, shot_noise: bool = False) -> torch.Tensor:
        return torch.full_like(mu, 1.0 / self.read_noise_adu**2)


EIGHT_BIT = SimSettings(
    geometry=Geometry(height=32, width=32),
    noise=NoiseParams(mode="test-8bit", baseline_adu=50.0, gaussian_var=4.0),
)


def test_a_camera_added_in_one_file_works_end_to_end(tmp_path):
    camera = EIGHT_BIT.noise.to_camera()
    assert camera == EightBitCamera(offset_adu=50.0, read_noise_adu=2.0)
    sim = Simulator(EIGHT_BIT, seed=0)
    empty = sim.sample(8, 0).frames.double()  # 32768 pixels of background only
    assert float(empty.mean()) == pytest.approx(50.0, abs=0.05)
    assert float(empty.var()) == pytest.approx(4.0, abs=0.15)
    assert float(sim.sample(2, 20).frames.max()) > 100.0  # the molecules are on top

    res = simulate_stack(tmp_path / "sim.tif", EIGHT_BIT, SimStackConfig(frames=3, molecules=5))
    assert res.dtype == "uint8"
    assert tifffile.imread(res.stacks[0]).dtype == np.uint8

    assert input_normalisation(EIGHT_BIT)[0] == 50.0 + EIGHT_BIT.psf.b
    bound = average_crlb(EIGHT_BIT, samples=5)
    assert bound.method == EightBitCamera.crlb_method
    assert math.isfinite(bound.lateral_nm) and math.isfinite(bound.axial_nm)


def test_an_unknown_mode_is_refused_with_the_known_ones():
    assert {"paper", "emccd", "scmos"} <= set(camera_modes())
    expected = r"unknown camera mode 'ccd', expected one of .*scmos"
    with pytest.raises(ValidationError, match=expected):
        NoiseParams(mode="ccd")


def test_a_taken_mode_is_refused():
    @dataclass(frozen=True, kw_only=True)
    class Impostor(EightBitCamera):
        mode = "paper"

    with pytest.raises(ValueError, match=r"'paper' .* taken by engines.cameras.paper.PaperNoise"):
        register(Impostor)
    assert NoiseParams().to_camera() == PaperNoise(poisson_rate=10.0, gaussian_var=9.0)


def test_settings_map_to_the_builtin_cameras():
    emccd = NoiseParams(mode="emccd", em_gain=300.0, read_noise_e=40.0).to_camera()
    assert emccd == EMCCD(
        background_photons=10.0,
        qe=0.9,
        em_gain=300.0,
        e_per_adu=12.0,
        baseline_adu=100.0,
        read_noise_e=40.0,
    )
    scmos = NoiseParams(mode="scmos", e_per_adu=0.5).to_camera()
    assert scmos == SCMOS(
        background_photons=10.0, qe=0.9, e_per_adu=0.5, baseline_adu=100.0, read_noise_e=1.5
    )
    assert scmos.intensity_scale() == pytest.approx(1.8)
    paper = NoiseParams().to_camera()
    assert paper.frame_dtype == np.float32 and paper.additive_noise
    assert emccd.frame_dtype == scmos.frame_dtype == np.uint16
    assert not emccd.additive_noise and not scmos.additive_noise
    assert paper.bead_brightness > emccd.bead_brightness  # beads stay below uint16 saturation


def test_frames_are_cast_as_the_camera_delivers_them():
    raw = np.array([-3.0, 1.4, 2.6, 70_000.0], dtype=np.float32)
    camera = NoiseParams(mode="scmos").to_camera()
    np.testing.assert_array_equal(camera.to_frame(raw), np.array([0, 1, 3, 65535], np.uint16))
    paper = NoiseParams().to_camera().to_frame(raw)
    assert paper.dtype == np.float32 and np.array_equal(paper, raw)
