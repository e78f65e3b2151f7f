"""``voxloc calibrate registration|psf|simulate-beads``: bead calibration commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.commands.options import (
    Default,
    add_camera_options,
    add_geometry_options,
    given,
    settings_from_args,
)

WORKFLOW = "engines.calibration.workflow"
MATCH = "engines.calibration.registration:MatchSettings"


def _cmd_registration(args: argparse.Namespace) -> int:
    from engines.calibration.registration import MatchSettings
    from engines.calibration.workflow import registration_from_files

    reg = registration_from_files(
        args.beads,
        args.out,
        geometry=settings_from_args(args).geometry,
        names=args.camera_names.split(",") if args.camera_names else None,
        match=MatchSettings(**given(args, max_shift_px="max_shift_px", min_matches="min_matches")),
        report=args.report,
        **given(
            args,
            gain_adu="gain_adu",
            baseline_adu="baseline_adu",
            threshold_sigma="threshold",
            roi_half_px="roi",
        ),
    )
    for cam in reg.cameras:
        print(cam.summary())
    print(f"registration written to {args.out} (PUT it to /registration)")
    return 0


def _cmd_psf(args: argparse.Namespace) -> int:
    from clients.commands.spline_options import write_spline
    from engines.calibration.workflow import psf_from_files, read_stacks

    settings = settings_from_args(args)
    stacks = read_stacks(args.zstacks, settings.geometry.planes, "bead z-stack")
    write_spline(args, stacks, settings.geometry)
    if args.spline_only:
        return 0
    cal, plot = psf_from_files(
        args.zstacks,
        args.out,
        settings=settings,
        z_step_nm=args.z_step_nm,
        plot=args.plot,
        **given(
            args,
            roi_half_px="roi",
            threshold_sigma="threshold",
            min_beads="min_beads",
            a_prime="a_prime",
        ),
    )
    p = cal.psf
    print(
        f"r0 {p.r0_nm:.1f} nm, D {p.d_nm:.1f} nm, A {p.a3:.3g}, B {p.b4:.3g}, a' {p.a_prime:.3g} "
        f"(measured {cal.a_prime_measured:.3g}), b {p.b:.3g}; focal offsets "
        f"{[round(v, 1) for v in p.focal_offsets_nm or ()]} nm; "
        f"width rms residual {100 * cal.rms_rel:.2f}%"
    )
    print(f"Gaussian PSF written to {args.out} (width residual above), plot {plot}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from engines.calibration.workflow import simulate_bead_files

    vectorial = str(getattr(args, "psf", None)) == "vectorial"  # not a PSF JSON
    settings = settings_from_args(argparse.Namespace(**{**vars(args), "psf": None}))
    if not vectorial:
        settings = settings_from_args(args)
    psf = None
    if vectorial:
        from engines.vectorial import VectorialPSF

        psf = VectorialPSF(settings)
    sim = simulate_bead_files(
        args.out,
        settings,
        psf=psf,
        **given(
            args,
            beads="beads",
            z_step_nm="z_step_nm",
            height="height",
            width="width",
            seed="seed",
        ),
    )
    print(f"registration beads: {' '.join(str(p) for p in sim.registration)}")
    print(f"z-stacks (step {sim.z_step_nm:g} nm): {' '.join(str(p) for p in sim.zstacks)}")
    return 0


def _microscope_options(p: argparse.ArgumentParser, *, psf: bool, camera: bool) -> None:
    g = p.add_argument_group("microscope")
    add_geometry_options(g, dz_nm="nominal plane spacing, nm (default %(default)s)")
    if psf:
        g.add_argument(
            "--psf",
            type=Path,
            default=None,
            help="PSF JSON to simulate with, or 'vectorial': z-stacks from the psfmodels "
            "microscope (NA 1.40 oil, 670 nm, water; docs/own-microscope.md)",
        )
        simulate = f"{WORKFLOW}:simulate_bead_files"
        g.add_argument(
            "--height",
            type=int,
            default=Default(simulate, "height"),
            help="simulated frame height, px",
        )
        g.add_argument(
            "--width",
            type=int,
            default=Default(simulate, "width"),
            help="simulated frame width, px",
        )
    if camera:
        add_camera_options(g, help="noise model / camera (default %(default)s)")


def _detection_options(p: argparse.ArgumentParser, fit: str) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        default=Default(fit, "threshold_sigma"),
        help="bead detection threshold, robust standard deviations (default %(default)s)",
    )
    p.add_argument(
        "--roi",
        type=int,
        default=Default(fit, "roi_half_px"),
        help="half-width of the bead fit window, px (default %(default)s)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="calibrate registration and PSF from bead recordings",
        description="Bead calibrations for your own microscope (docs/own-microscope.md).",
    )
    csub = cal.add_subparsers(dest="calibrate_command", metavar="WHAT", required=True)
    _register_registration(csub)
    _register_psf(csub)
    _register_simulate(csub)


def _register_registration(csub: argparse._SubParsersAction) -> None:
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
    workflow = f"{WORKFLOW}:registration_from_files"
    p.add_argument(
        "--gain-adu",
        type=float,
        default=Default(workflow, "gain_adu"),
        help="ADU per model unit (default %(default)s)",
    )
    p.add_argument(
        "--baseline-adu",
        type=float,
        default=Default(workflow, "baseline_adu"),
        help="camera baseline (default %(default)s)",
    )
    p.add_argument(
        "--max-shift-px",
        type=float,
        default=Default(MATCH, "max_shift_px"),
        help="largest camera offset to search, px (default %(default)s)",
    )
    p.add_argument(
        "--min-matches",
        type=int,
        default=Default(MATCH, "min_matches"),
        help="beads a camera must match",
    )
    p.add_argument("--report", type=Path, default=None, help="also write residuals as JSON")
    _detection_options(p, "engines.calibration.registration:fit_registration")
    _microscope_options(p, psf=False, camera=False)
    p.set_defaults(func=_cmd_registration)


def _register_psf(csub: argparse._SubParsersAction) -> None:
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
    fit = "engines.calibration.psf_fit:calibrate_psf"
    p.add_argument(
        "--a-prime",
        type=float,
        default=Default(fit, "a_prime"),
        help="use this a' instead of the beads' (beads outshine single dyes)",
    )
    p.add_argument(
        "--min-beads",
        type=int,
        default=Default(fit, "min_beads"),
        help="isolated beads needed per plane",
    )
    _detection_options(p, fit)
    _microscope_options(p, psf=False, camera=True)
    from clients.commands.spline_options import add_spline_options

    add_spline_options(p)
    p.set_defaults(func=_cmd_psf)


def _register_simulate(csub: argparse._SubParsersAction) -> None:
    p = csub.add_parser(
        "simulate-beads",
        help="write simulated bead recordings to try the above",
        description="Simulated registration beads (random affines) and bead "
        "z-stacks, with the truth in truth.json.",
    )
    simulate = f"{WORKFLOW}:simulate_bead_files"
    p.add_argument("-o", "--out", type=Path, required=True, help="directory to write")
    p.add_argument(
        "--beads", type=int, default=Default(simulate, "beads"), help="registration beads"
    )
    p.add_argument(
        "--z-step-nm", type=float, default=Default(simulate, "z_step_nm"), help="z-stack step, nm"
    )
    p.add_argument("--seed", type=int, default=Default(simulate, "seed"))
    _microscope_options(p, psf=True, camera=True)
    p.set_defaults(func=_cmd_simulate)
