"""Which PSF the simulator renders: the paper's Gaussian or a measured spline.

Both are :class:`PSFModel` s: ``render`` maps molecules to the noiseless ``(B, P, H, W)``
intensity (background ``b`` excluded). :func:`psf_model_for` picks one from the settings,
so the simulator, the CRLB and the bead simulation follow ``settings.psf.spline``.
"""

from __future__ import annotations

import math
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import torch

from engines.config import SimSettings, SplineRef
from engines.errors import FormatError
from engines.psf import render_planes
from engines.spline_psf import SplinePSF, file_sha256, render_spline


class PSFModel(Protocol):
    def render(
        self,
        xyz_nm: torch.Tensor,
        weights: torch.Tensor,
        drift_nm: torch.Tensor,
        *,
        height: int,
        width: int,
    ) -> torch.Tensor:
        """``(B, P, height, width)`` intensity of ``(B, M, 3)`` molecules (nm) with
        ``(B, M)`` weights (0: padding) and ``(B, P, 2)`` per-plane lateral drift (nm)."""
        ...

    def window_px(self) -> int:
        """Odd window side, px, that holds one molecule's image in every plane."""
        ...


class GaussianPSF:
    """The paper's multi-plane Gaussian (Eqs. 4-7), point-sampled at pixel centres."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.focal_nm = torch.tensor(settings.focal_planes_nm(), dtype=torch.float32)

    def render(
        self,
        xyz_nm: torch.Tensor,
        weights: torch.Tensor,
        drift_nm: torch.Tensor,
        *,
        height: int,
        width: int,
    ) -> torch.Tensor:
        return render_planes(
            xyz_nm,
            weights,
            drift_nm,
            self.focal_nm.to(xyz_nm.device, xyz_nm.dtype),
            px_nm=self.settings.geometry.px_nm,
            height=height,
            width=width,
            psf=self.settings.psf,
        )

    def window_px(self) -> int:
        from engines.evaluate.crlb import window_px

        return window_px(self.settings)


class SplineModel:
    """A :class:`SplinePSF` at the settings' brightness: a weight-1 molecule centred on a
    pixel has the in-focus peak a' / (2 pi r0^2) (averaged over planes), as the Gaussian."""

    def __init__(self, spline: SplinePSF, settings: SimSettings) -> None:
        g = settings.geometry
        spline.check_geometry(g.planes, g.px_nm)
        self.spline = spline
        p = settings.psf
        target_peak = p.a_prime / (2.0 * math.pi * p.r0_nm**2)
        self.amplitude = target_peak / spline.peak_reference()

    def render(
        self,
        xyz_nm: torch.Tensor,
        weights: torch.Tensor,
        drift_nm: torch.Tensor,
        *,
        height: int,
        width: int,
    ) -> torch.Tensor:
        return render_spline(
            self.spline, xyz_nm, weights * self.amplitude, drift_nm, height=height, width=width
        )

    def window_px(self) -> int:
        return self.spline.roi_px


@lru_cache(maxsize=8)
def _load_spline(path: str, sha256: str) -> SplinePSF:
    return SplinePSF.load(path, sha256)


def load_spline_for(settings: SimSettings) -> SplinePSF:
    ref = settings.psf.spline
    if ref is None:
        raise ValueError("these settings have no spline PSF")
    return _load_spline(str(Path(ref.path).resolve()), ref.sha256)


def psf_model_for(settings: SimSettings) -> PSFModel:
    """The Gaussian, or the spline file of ``settings.psf.spline`` (hash checked)."""
    if settings.psf.spline is None:
        return GaussianPSF(settings)
    return SplineModel(load_spline_for(settings), settings)


SPLINE_IN_MODEL = "psf_spline.npz"


def bundle_spline(settings: SimSettings, model_dir: Path) -> SimSettings:
    """Copy the settings' spline file into ``model_dir``; settings that name the copy by a
    path relative to the model directory (what ``model.json`` records)."""
    ref = settings.psf.spline
    if ref is None:
        return settings
    src = Path(ref.path)
    dst = Path(model_dir) / SPLINE_IN_MODEL
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    if file_sha256(dst) != ref.sha256:
        raise FormatError(f"spline PSF {src}: its sha256 differs from {ref.sha256}")
    return _with_spline(settings, SplineRef(path=SPLINE_IN_MODEL, sha256=ref.sha256))


def resolve_spline(settings: SimSettings, model_dir: Path) -> SimSettings:
    """Settings whose relative spline path is made absolute against ``model_dir``."""
    ref = settings.psf.spline
    if ref is None or Path(ref.path).is_absolute():
        return settings
    path = str((Path(model_dir) / ref.path).resolve())
    return _with_spline(settings, SplineRef(path=path, sha256=ref.sha256))


def spline_ref(path: str | Path) -> SplineRef:
    """A :class:`SplineRef` of a spline file (checks that it loads)."""
    SplinePSF.load(path)
    return SplineRef(path=str(Path(path).resolve()), sha256=file_sha256(path))


def _with_spline(settings: SimSettings, ref: SplineRef) -> SimSettings:
    psf = settings.psf.model_copy(update={"spline": ref})
    return settings.model_copy(update={"psf": psf})


def spline_mean_image(theta: torch.Tensor, settings: SimSettings, side: int) -> torch.Tensor:
    """``(N, P, side, side)`` mean image of ``(N, 4)`` molecules (x, y, z nm in the window,
    weight) under the settings' spline, exact cubic in all three axes (for the CRLB)."""
    model = SplineModel(load_spline_for(settings), settings)
    spline = model.spline
    if side != spline.roi_px:
        raise ValueError(f"the spline renders {spline.roi_px} px windows, asked for {side}")
    planes = [
        spline.windows(k, theta[:, 0], theta[:, 1], theta[:, 2], exact=True)[0]
        for k in range(spline.planes)
    ]
    return torch.stack(planes, dim=1) * (theta[:, 3] * model.amplitude)[:, None, None, None]
