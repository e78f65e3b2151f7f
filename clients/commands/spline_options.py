"""The spline half of ``voxloc calibrate psf``: options, fit, file and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clients.commands.options import value
from engines.config import Geometry


def add_spline_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spline PSF")
    g.add_argument(
        "--spline",
        type=Path,
        default=None,
        help="spline PSF file to write (default OUT with suffix .npz)",
    )
    g.add_argument(
        "--oversample", type=int, default=2, help="lateral spline knots per pixel (default 2)"
    )
    g.add_argument(
        "--smooth-z-nm",
        type=float,
        default=30.0,
        help="z smoothing of the noisy parts of the PSF, nm (default 30; 0: none)",
    )
    g.add_argument(
        "--spline-only", action="store_true", help="skip the Gaussian fit (OUT.json, OUT.png)"
    )


def write_spline(args: argparse.Namespace, stacks: list[np.ndarray], geometry: Geometry) -> Path:
    """Fit, save and plot the spline; print a summary; returns the file written."""
    from engines.calibration.spline_fit import SplineFitSettings, fit_spline_psf
    from engines.calibration.spline_plots import plot_spline_fit

    cfg = SplineFitSettings(
        roi_half_px=value(args.roi),
        oversample=value(args.oversample),
        smooth_z_nm=value(args.smooth_z_nm),
        threshold_sigma=value(args.threshold),
        min_beads=value(args.min_beads),
    )
    source = " ".join(str(p) for p in args.zstacks)
    fit = fit_spline_psf(
        stacks, z_step_nm=value(args.z_step_nm), geometry=geometry, cfg=cfg, source=source
    )
    out = args.spline or Path(args.out).with_suffix(".npz")
    fit.spline.save(out)
    stem = out.with_suffix("")
    plots = plot_spline_fit(
        fit, stem.with_name(stem.name + "_beads.png"), stem.with_name(stem.name + "_widths.png")
    )
    sp = fit.spline
    lo, hi = sp.z_range_nm
    print(
        f"spline PSF written to {out} (voxloc train --psf {out}): {sp.planes} planes, "
        f"beads {sp.meta['beads_per_plane']}, z {lo:.0f}..{hi:.0f} nm in {sp.z_step_nm:g} nm, "
        f"{sp.roi_px} px windows, knots px/{sp.oversample}; plane foci (bead z of maximum "
        f"peak) {[round(float(f), 1) for f in sp.focal_nm]} nm; background "
        f"{[round(b, 2) for b in sp.meta['background_per_plane']]}; plots "
        f"{', '.join(str(p) for p in plots)}"
    )
    return out
