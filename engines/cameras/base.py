"""The camera interface and the registry that maps a ``NoiseParams.mode`` to its class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

    from engines.config import NoiseParams


class Camera(ABC):
    """Noise model of one camera: the frame it records from the noiseless PSF intensity.

    Subclasses are frozen keyword-only dataclasses of physical parameters with units in
    their names, built from the serialised settings by :meth:`from_settings`.
    """

    mode: ClassVar[str]
    """Registry key, the value of ``NoiseParams.mode``."""
    frame_dtype: ClassVar[np.dtype]
    """dtype of the frames the camera delivers."""
    bead_brightness: ClassVar[float]
    """Weight of a calibration bead relative to a dye molecule: beads outshine dyes, a
    camera keeps them below saturation."""
    additive_noise: ClassVar[bool] = False
    """True when the noise does not depend on the signal (paper Eq. 3); the evaluation then
    also reports the bound with shot noise on the signal."""
    crlb_method: ClassVar[str]
    """How :meth:`pixel_information` models the noise, for the CRLB report."""

    @classmethod
    @abstractmethod
    def from_settings(cls, noise: NoiseParams) -> Self:
        """The camera that the serialised ``noise`` describes."""

    @abstractmethod
    def sample(self, intensity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noisy frames, frame units, from the noiseless intensity (background ``b``
        included); every random draw comes from ``generator``."""

    @abstractmethod
    def expected_background(self, psf_b: float) -> float:
        """Mean value of an empty pixel in frame units, for a PSF background ``psf_b``."""

    @abstractmethod
    def intensity_scale(self) -> float:
        """Frame units per unit of PSF intensity."""

    def zero_level(self) -> float:
        """Frame value of a pixel that receives no light (the baseline), frame units;
        ``(value - zero_level()) / intensity_scale()`` is photons (PSF units)."""
        return 0.0

    @abstractmethod
    def pixel_information(self, mu: torch.Tensor, *, shot_noise: bool = False) -> torch.Tensor:
        """Fisher information J_pix per unit mean shift of each pixel, for the mean
        intensity ``mu`` (PSF units, background ``b`` included).

        ``shot_noise`` asks additive-noise models for the reading with shot noise on the
        signal; models that already have it ignore the flag.
        """

    def to_frame(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` (frame units) as the camera delivers them, in :attr:`frame_dtype`."""
        return cast_frames(frames, self.frame_dtype)


def cast_frames(frames: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``frames`` in ``dtype``; for an integer dtype rounded and clipped to its range."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(frames), info.min, info.max).astype(dtype)
    return frames.astype(dtype)


C = TypeVar("C", bound=type[Camera])

_CAMERAS: dict[str, type[Camera]] = {}


def register(cls: C) -> C:
    """Class decorator: make ``cls`` the camera of ``NoiseParams.mode == cls.mode``."""
    taken = _CAMERAS.get(cls.mode)
    if taken is not None and taken is not cls:
        raise ValueError(
            f"camera mode {cls.mode!r} of {cls.__qualname__} is taken by "
            f"{taken.__module__}.{taken.__qualname__}"
        )
    _CAMERAS[cls.mode] = cls
    return cls


def camera_modes() -> tuple[str, ...]:
    """The registered modes, in registration order."""
    return tuple(_CAMERAS)


def camera_class(mode: str) -> type[Camera]:
    try:
        return _CAMERAS[mode]
    except KeyError:
        raise ValueError(
            f"unknown camera mode {mode!r}, expected one of {', '.join(_CAMERAS)}"
        ) from None
