"""``voxloc calibrate registration|psf|simulate-beads``: bead calibration commands."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from engines.errors import FormatError

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
                f"camera (--planes {planes}), got shape {arr.shape}"
            )
        return [arr[:, k] for k in range(planes)]
    if len(arrays) != planes:
        raise FormatError(
            f"expected {planes} {what} files (one per camera/plane, --planes "
            f"{planes}), got {len(arrays)}: {[str(p) for p in paths]}"
        )
    return arrays


def _settings(args: argparse.Namespace):
    from engines.cli import settings_from_args

    if str(getattr(args, "psf", None)) == "vectorial":  # not a PSF JSON: see _vectorial_psf
        args = argparse.Namespace(**{**vars(args), "psf": None})
    return settings_from_args(args)


def _cmd_registration(args: argparse.Namespace) -> int:
    from engines.calibration.registration import MatchSettings, fit_registration

    geom = _settings(args).geometry
    images = read_stacks(args.beads, geom.planes, "bead image")
    names = args.camera_names.split(",") if args.camera_names else None
    ms = MatchSettings(max_shift_px=args.max_shift_px, min_matches=args.min_matches)
    reg = fit_registration(
        images,
        px_nm=geom.px_nm,
        planes=geom.planes,
        names=names,
        match=ms,
        threshold_sigma=args.threshold,
        roi_half_px=args.roi,
    )
    body = reg.to_json(gain_adu=args.gain_adu, baseline_adu=args.baseline_adu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    for cam in reg.cameras:
        print(cam.summary())
    if args.report:
        args.report.write_text(json.dumps(reg.report(), indent=2) + "\n")
    print(f"registration written to {args.out} (PUT it to /registration)")
    return 0


def _cmd_psf(args: argparse.Namespace) -> int:
    from engines.calibration.spline_cli import write_spline

    settings = _settings(args)
    stacks = read_stacks(args.zstacks, settings.geometry.planes, "bead z-stack")
    write_spline(args, stacks, settings.geometry)
    if args.spline_only:
        return 0
    from engines.calibration.psf_fit import calibrate_psf, plot_widths

    cal = calibrate_psf(
        stacks,
        z_step_nm=args.z_step_nm,
        geometry=settings.geometry,
        noise=settings.noise,
        roi_half_px=args.roi,
        threshold_sigma=args.threshold,
        min_beads=args.min_beads,
        a_prime=args.a_prime,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cal.to_json(), indent=2) + "\n")
    p = cal.psf
    print(
        f"r0 {p.r0_nm:.1f} nm, D {p.d_nm:.1f} nm, A {p.a3:.3g}, B {p.b4:.3g}, a' {p.a_prime:.3g} "
        f"(measured {cal.a_prime_measured:.3g}), b {p.b:.3g}; focal offsets "
        f"{[round(v, 1) for v in p.focal_offsets_nm or ()]} nm; "
        f"width rms residual {100 * cal.rms_rel:.2f}%"
    )
    plot = args.plot or args.out.with_suffix(".png")
    plot_widths(cal, plot)
    print(f"Gaussian PSF written to {args.out} (width residual above), plot {plot}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from engines.calibration import beads as bd

    settings = _settings(args)
    g = settings.geometry.with_size(args.height, args.width)
    settings = settings.model_copy(update={"geometry": g})
    aff = bd.random_affines(g.planes, height=g.height, width=g.width, seed=args.seed)
    # beads outshine dyes; on a camera keep them below uint16 saturation
    bright = 20.0 if settings.noise.mode == "paper" else 4.0
    reg = bd.simulate_registration_beads(
        settings, aff, beads=args.beads, seed=args.seed, brightness=bright
    )
    vectorial = _vectorial_psf(args, settings)
    zs = bd.simulate_bead_zstacks(
        settings, z_step_nm=args.z_step_nm, seed=args.seed, brightness=bright, psf=vectorial
    )
    reg_paths = bd.save_stacks(reg.images, args.out, "beads_cam")
    z_paths = bd.save_stacks(zs.stacks, args.out, "zstack_plane")
    truth = {
        "affines": aff.tolist(),
        "psf": settings.psf.model_dump(mode="json") if vectorial is None else "vectorial",
        **({} if vectorial is None else {"vectorial": vectorial.describe()}),
        "focal_nm": zs.focal_nm.tolist(),
        "z_first_nm": float(zs.z_nm[0]),
        "z_step_nm": zs.z_step_nm,
    }
    (args.out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"registration beads: {' '.join(str(p) for p in reg_paths)}")
    print(f"z-stacks (step {zs.z_step_nm:g} nm): {' '.join(str(p) for p in z_paths)}")
    return 0


def _vectorial_psf(args: argparse.Namespace, settings):
    """``--psf vectorial``: the psfmodels microscope for the z-stacks, else None."""
    if getattr(args, "psf", None) is None or str(args.psf) != "vectorial":
        return None
    from engines.vectorial import VectorialPSF

    return VectorialPSF(settings)


def _microscope_options(p: argparse.ArgumentParser, *, psf: bool, camera: bool) -> None:
    g = p.add_argument_group("microscope")
    g.add_argument("--planes", type=int, default=None, help="cameras/planes (default 4)")
    g.add_argument("--px-nm", type=float, default=None, help="pixel size, nm (default 192)")
    g.add_argument(
        "--dz-nm", type=float, default=None, help="nominal plane spacing, nm (default 400)"
    )
    if psf:
        g.add_argument(
            "--psf",
            type=Path,
            default=None,
            help="PSF JSON to simulate with, or 'vectorial': z-stacks from the psfmodels "
            "microscope (NA 1.40 oil, 670 nm, water; docs/own-microscope.md)",
        )
        g.add_argument("--height", type=int, default=96, help="simulated frame height, px")
        g.add_argument("--width", type=int, default=96, help="simulated frame width, px")
    if camera:
        g.add_argument(
            "--camera",
            choices=["paper", "emccd", "scmos"],
            default=None,
            help="noise model / camera (default paper)",
        )
        g.add_argument(
            "--camera-json", type=Path, default=None, help="NoiseParams JSON (gain, baseline, ...)"
        )


def _detection_options(p: argparse.ArgumentParser, roi: int) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        default=8.0,
        help="bead detection threshold, robust standard deviations (default 8)",
    )
    p.add_argument(
        "--roi",
        type=int,
        default=roi,
        help=f"half-width of the bead fit window, px (default {roi})",
    )


def register(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="calibrate registration and PSF from bead recordings",
        description="Bead calibrations for your own microscope (docs/own-microscope.md).",
    )
    csub = cal.add_subparsers(dest="calibrate_command", metavar="WHAT", required=True)

    p = csub.add_parser(
        "registration",
        help="camera affines from bead images",
        description="Fit each camera's 2x3 affine into the reference camera "
        "(plane 0) from one bead recording per camera.",
    )
    p.add_argument(
        "beads",
        type=Path,
        nargs="+",
        help="one TIFF per camera in plane order (frames are averaged)",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="registration JSON to write")
    p.add_argument("--camera-names", default=None, help="comma-separated (default cam0,cam1,..)")
    p.add_argument("--gain-adu", type=float, default=1.0, help="ADU per model unit (default 1)")
    p.add_argument("--baseline-adu", type=float, default=0.0, help="camera baseline (default 0)")
    p.add_argument(
        "--max-shift-px",
        type=float,
        default=20.0,
        help="largest camera offset to search, px (default 20)",
    )
    p.add_argument("--min-matches", type=int, default=6, help="beads a camera must match")
    p.add_argument("--report", type=Path, default=None, help="also write residuals as JSON")
    _detection_options(p, 5)
    _microscope_options(p, psf=False, camera=False)
    p.set_defaults(func=_cmd_registration)

    p = csub.add_parser(
        "psf",
        help="spline PSF (and the Gaussian fit) from bead z-stacks",
        description="Build the cubic-spline PSF of every plane from one bead z-stack per "
        "plane (OUT.npz: voxloc train --psf OUT.npz), with plots of bead images vs model "
        "and widths vs z; then fit the paper's Gaussian (r0, D, A, B, a', focal offsets) "
        "to the same beads and report its width residual (OUT.json, OUT.png).",
    )
    p.add_argument("zstacks", type=Path, nargs="+", help="one (Z, H, W) TIFF per plane")
    p.add_argument(
        "--z-step-nm",
        type=float,
        required=True,
        help="stage step between slices, nm (positive: towards higher planes)",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="PSF JSON to write")
    p.add_argument("--plot", type=Path, default=None, help="plot file (default OUT.png)")
    p.add_argument(
        "--a-prime",
        type=float,
        default=None,
        help="use this a' instead of the beads' (beads outshine single dyes)",
    )
    p.add_argument("--min-beads", type=int, default=3, help="isolated beads needed per plane")
    _detection_options(p, 9)
    _microscope_options(p, psf=False, camera=True)
    from engines.calibration.spline_cli import add_spline_options

    add_spline_options(p)
    p.set_defaults(func=_cmd_psf)

    p = csub.add_parser(
        "simulate-beads",
        help="write simulated bead recordings to try the above",
        description="Simulated registration beads (random affines) and bead "
        "z-stacks, with the truth in truth.json.",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="directory to write")
    p.add_argument("--beads", type=int, default=80, help="registration beads")
    p.add_argument("--z-step-nm", type=float, default=50.0, help="z-stack step, nm")
    p.add_argument("--seed", type=int, default=0)
    _microscope_options(p, psf=True, camera=True)
    p.set_defaults(func=_cmd_simulate)
