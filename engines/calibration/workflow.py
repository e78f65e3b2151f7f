"""Bead calibrations from files to files (what ``voxloc calibrate`` runs).

Each workflow reads the TIFF recordings, runs the fit of :mod:`registration` or
:mod:`psf_fit` and writes its JSON; the keyword arguments not named here go to that fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.calibration import beads as bd
from engines.calibration.psf_fit import PSFCalibration, calibrate_psf, plot_widths
from engines.calibration.registration import Registration, fit_registration
from engines.config import Geometry, SimSettings
from engines.errors import FormatError
from engines.io.atomic import write_json

if TYPE_CHECKING:
    from engines.vectorial import VectorialPSF

log = logging.getLogger(__name__)


def read_stacks(paths: list[Path], planes: int, what: str) -> list[np.ndarray]:
    """One array per camera/plane: one TIFF each, or one TIFF of ``(N, planes, H, W)``."""
    import tifffile

    arrays = []
    for path in paths:
        try:
            arrays.append(np.asarray(tifffile.imread(path)))
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise FormatError(f"cannot read {what} {path}: {exc}") from exc
    for path, arr in zip(paths, arrays, strict=True):
        if arr.dtype.kind == "u" and (arr == np.iinfo(arr.dtype).max).mean() > 1e-4:
            log.warning(
                "%s: %.2f%% of pixels saturated (%d): bead centres, widths and a' will "
                "be biased; record with less light or exposure",
                path,
                100 * (arr == np.iinfo(arr.dtype).max).mean(),
                np.iinfo(arr.dtype).max,
            )
    if len(arrays) == 1 and arrays[0].ndim == 4:
        arr = arrays[0]
        if arr.shape[1] != planes:
            raise FormatError(
                f"{paths[0]}: expected (N, {planes}, H, W) with one plane per "
                f"camera (planes = {planes}), got shape {arr.shape}"
            )
        return [arr[:, k] for k in range(planes)]
    if len(arrays) != planes:
        raise FormatError(
            f"expected {planes} {what} files (one per camera/plane, planes = "
            f"{planes}), got {len(arrays)}: {[str(p) for p in paths]}"
        )
    return arrays


def _write_json(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, body)


def registration_from_files(
    beads: list[Path],
    out: Path,
    *,
    geometry: Geometry,
    gain_adu: float = 1.0,
    baseline_adu: float = 0.0,
    report: Path | None = None,
    **fit: Any,
) -> Registration:
    """Fit the camera affines from one bead recording per camera; write the body
    ``PUT /registration`` takes to ``out`` (and the residuals to ``report``)."""
    images = read_stacks(beads, geometry.planes, "bead image")
    reg = fit_registration(images, px_nm=geometry.px_nm, planes=geometry.planes, **fit)
    _write_json(out, reg.to_json(gain_adu=gain_adu, baseline_adu=baseline_adu))
    if report:
        _write_json(report, reg.report())
    return reg


def psf_from_files(
    zstacks: list[Path],
    out: Path,
    *,
    settings: SimSettings,
    z_step_nm: float,
    plot: Path | None = None,
    **fit: Any,
) -> tuple[PSFCalibration, Path]:
    """Fit the PSF from one bead z-stack per plane; write its JSON to ``out`` and the width
    plot to ``plot`` (default ``out`` with ``.png``). Returns the fit and the plot's path."""
    stacks = read_stacks(zstacks, settings.geometry.planes, "bead z-stack")
    cal = calibrate_psf(
        stacks, z_step_nm=z_step_nm, geometry=settings.geometry, noise=settings.noise, **fit
    )
    _write_json(out, cal.to_json())
    plot = plot or out.with_suffix(".png")
    plot_widths(cal, plot)
    return cal, plot


@dataclass
class SimulatedBeads:
    registration: list[Path]  # one bead recording per camera
    zstacks: list[Path]  # one bead z-stack per plane
    z_step_nm: float
    truth: Path


def simulate_bead_files(
    out_dir: Path,
    settings: SimSettings,
    *,
    beads: int = 80,
    z_step_nm: float = 50.0,
    height: int = 96,
    width: int = 96,
    seed: int = 0,
    psf: VectorialPSF | None = None,
) -> SimulatedBeads:
    """Simulated registration beads (random affines) and bead z-stacks, as TIFFs in
    ``out_dir``, with the truth (affines, PSF, focal positions) in ``truth.json``.
    ``psf``: draw the z-stacks from this microscope (the vectorial one) instead of the
    settings' PSF; the registration beads keep the settings' PSF."""
    g = settings.geometry.with_size(height, width)
    settings = settings.model_copy(update={"geometry": g})
    aff = bd.random_affines(g.planes, height=g.height, width=g.width, seed=seed)
    # beads outshine dyes; on a camera keep them below uint16 saturation
    bright = settings.noise.to_camera().bead_brightness
    reg = bd.simulate_registration_beads(settings, aff, beads=beads, seed=seed, brightness=bright)
    zs = bd.simulate_bead_zstacks(
        settings, z_step_nm=z_step_nm, seed=seed, brightness=bright, psf=psf
    )
    reg_paths = bd.save_stacks(reg.images, out_dir, "beads_cam")
    z_paths = bd.save_stacks(zs.stacks, out_dir, "zstack_plane")
    truth = {
        "affines": aff.tolist(),
        "psf": settings.psf.model_dump(mode="json") if psf is None else "vectorial",
        **({} if psf is None else {"vectorial": psf.describe()}),
        "focal_nm": zs.focal_nm.tolist(),
        "z_first_nm": float(zs.z_nm[0]),
        "z_step_nm": zs.z_step_nm,
    }
    _write_json(out_dir / "truth.json", truth)
    return SimulatedBeads(reg_paths, z_paths, zs.z_step_nm, out_dir / "truth.json")
