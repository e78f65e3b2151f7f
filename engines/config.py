"""Typed physical settings of the simulated microscope (CONVENTIONS.md defaults).

Every length is in nanometres and says so in its name. These objects are written to and
read from a model directory's ``model.json``, so a model carries the microscope it was
trained for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from engines.cameras import Camera


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Geometry(_Frozen):
    """Voxel grid of one frame: ``planes`` focal planes of ``height x width`` pixels."""

    planes: int = Field(4, ge=2, le=8)
    px_nm: float = Field(192.0, gt=0, le=10_000)
    dz_nm: float = Field(400.0, gt=0, le=10_000)
    height: int = Field(64, ge=1, le=8192)
    width: int = Field(64, ge=1, le=8192)

    @property
    def depth_nm(self) -> float:
        return self.planes * self.dz_nm

    def with_size(self, height: int, width: int) -> Geometry:
        return self.model_copy(update={"height": height, "width": width})


class SplineRef(_Frozen):
    """A measured cubic-spline PSF file (:mod:`engines.spline_psf`) and its sha256.

    A relative ``path`` is relative to the model directory that records it.
    """

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PSFParams(_Frozen):
    """Multi-plane Gaussian PSF of paper Eqs. 4-6 (Table 2 defaults).

    ``a_prime`` is the integrated intensity a' of Eq. 6; ``b`` a constant background.
    With ``spline`` set, frames are drawn from that measured PSF instead of the Gaussian;
    ``a_prime`` and ``r0_nm`` then only set the brightness (a weight-1 molecule's in-focus
    peak pixel is a' / (2 pi r0^2), as the Gaussian's) and ``b`` the background.
    """

    a_prime: float = Field(5.0e7, gt=0)
    b: float = Field(0.0, ge=0)
    r0_nm: float = Field(133.0, gt=0)
    d_nm: float = Field(302.0, gt=0)
    a3: float = Field(7.37e-4, description="A, cubic coefficient of the defocus curve")
    b4: float = Field(6.27e-3, ge=0, description="B, quartic coefficient of the defocus curve")
    focal_offsets_nm: tuple[float, ...] | None = Field(
        None,
        description="Per-plane focal position minus its nominal (k + 0.5) * dz; "
        "None means every plane sits at its nominal position.",
    )
    spline: SplineRef | None = Field(None, description="measured spline PSF file, or None")


class NoiseParams(_Frozen):
    """Noise model, as serialised; :meth:`to_camera` builds the model itself.

    ``mode`` names a camera of :mod:`engines.cameras`; each reads the fields it needs.

    ``paper``: Table 3, additive Poisson(``poisson_rate``) + Gaussian(0, ``gaussian_var``)
    on the noiseless intensity, in arbitrary intensity units.

    ``emccd`` / ``scmos``: a real camera. The PSF intensity is read as expected photons;
    shot noise on signal + background, quantum efficiency, EM gain with excess noise
    (EMCCD) or read noise (sCMOS), conversion to ADU with a baseline, uint16 clipping.
    """

    mode: str = Field("paper", description="camera model: paper, emccd, scmos, ...")
    poisson_rate: float = Field(10.0, ge=0)
    gaussian_var: float = Field(9.0, ge=0)
    background_photons: float = Field(10.0, ge=0)
    qe: float = Field(0.9, gt=0, le=1)
    em_gain: float = Field(100.0, ge=1)
    e_per_adu: float = Field(12.0, gt=0)
    baseline_adu: float = Field(100.0, ge=0)
    read_noise_e: float = Field(1.5, ge=0)

    @field_validator("mode")
    @classmethod
    def _registered(cls, mode: str) -> str:
        from engines.cameras import camera_class  # the cameras need torch, settings do not

        camera_class(mode)
        return mode

    def to_camera(self) -> Camera:
        from engines.cameras import camera_class

        return camera_class(self.mode).from_settings(self)

    def expected_background(self, psf_b: float) -> float:
        """Mean value of an empty pixel in the units frames arrive in."""
        return self.to_camera().expected_background(psf_b)

    def intensity_scale(self) -> float:
        """Frame units per unit of PSF intensity (1 in paper mode, ADU/photon otherwise)."""
        return self.to_camera().intensity_scale()


class SimSettings(_Frozen):
    """Everything the simulator needs to draw training or test frames."""

    geometry: Geometry = Geometry()
    psf: PSFParams = PSFParams()
    noise: NoiseParams = NoiseParams()
    drift_max_nm: float = Field(48.0, ge=0, description="per-plane lateral drift vs plane 0")
    weight_min: float = Field(0.3, ge=0, le=1)
    weight_max: float = Field(1.0, ge=0, le=1)
    margin_px: int = Field(
        4, ge=0, le=64, description="molecules are also drawn this far outside the frame"
    )

    @model_validator(mode="after")
    def _check(self) -> SimSettings:
        if self.weight_min > self.weight_max:
            raise ValueError(f"weight_min {self.weight_min} > weight_max {self.weight_max}")
        offs = self.psf.focal_offsets_nm
        if offs is not None and len(offs) != self.geometry.planes:
            raise ValueError(
                f"psf.focal_offsets_nm has {len(offs)} entries, geometry has "
                f"{self.geometry.planes} planes"
            )
        return self

    def focal_planes_nm(self) -> list[float]:
        """Focal z of each plane, nm (plane k nominally at (k + 0.5) * dz)."""
        g = self.geometry
        offs = self.psf.focal_offsets_nm or (0.0,) * g.planes
        return [(k + 0.5) * g.dz_nm + offs[k] for k in range(g.planes)]
