"""``voxloc simulate``: a simulated test stack and its ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.commands.options import Default, add_settings_options, build, settings_from_args

CONFIG = "engines.io.simstack:SimStackConfig"


def _cmd_simulate(args: argparse.Namespace) -> int:
    from engines.io.simstack import SimStackConfig, simulate_stack

    vectorial = str(args.psf) == "vectorial"  # the psfmodels microscope, not a file
    settings = settings_from_args(argparse.Namespace(**{**vars(args), "psf": None}))
    if not vectorial:
        settings = settings_from_args(args)
    if args.drift_nm is None:  # append options cannot default to a Default
        args.drift_nm = Default(CONFIG, "stage_drift_nm")
    if args.size is not None:
        geometry = settings.geometry.with_size(args.size, args.size)
        settings = settings.model_copy(update={"geometry": geometry})
    cfg = build(
        SimStackConfig,
        args,
        dict(
            frames="frames",
            molecules="molecules",
            seed="seed",
            dtype="dtype",
            on_frames="on_frames",
            off_frames="off_frames",
            structure="structure",
            stage_drift_nm="drift_nm",
            z_nm="z_nm",
        ),
        per_plane=args.per_plane,
        drift=not args.no_drift,
        progress=not args.quiet,
        blinking=args.blinking,
    )
    psf = None
    if vectorial:
        from engines.vectorial import VectorialPSF

        psf = VectorialPSF(settings)
    res = simulate_stack(args.out, settings, cfg, psf=psf)
    shape = "x".join(map(str, res.shape))
    print(
        f"wrote {', '.join(map(str, res.stacks))} ({shape} TZYX {res.dtype}) and "
        f"ground truth {res.truth} ({res.molecules} molecules)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a simulated test stack and its ground truth",
        description="Simulate frames with the paper's observation model and "
        "write an ImageJ TZYX TIFF (or one TIFF per plane) plus the ground "
        "truth as NAME_truth.csv (localization CSV format + weight column).",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="stack TIFF to write")
    p.add_argument(
        "--frames",
        type=int,
        default=Default(CONFIG, "frames"),
        help="frames (time points, default %(default)s)",
    )
    p.add_argument(
        "--molecules",
        type=int,
        default=Default(CONFIG, "molecules"),
        help="mean molecules per frame (default %(default)s, paper Table 3)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="frame height and width, px (default: the microscope's, 64)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=Default(CONFIG, "seed"),
        help="random seed (default %(default)s)",
    )
    p.add_argument(
        "--per-plane",
        action="store_true",
        help="one TIFF per plane: NAME_plane0.tif, NAME_plane1.tif, ...",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "uint16", "float32"],
        default=Default(CONFIG, "dtype"),
        help="pixel type (auto: float32 for paper noise, uint16 for cameras; "
        "uint16 rounds and clips to [0, 65535]; default %(default)s)",
    )
    p.add_argument("--no-drift", action="store_true", help="no per-plane lateral drift")
    k = p.add_argument_group(
        "a fixed sample that blinks and drifts (default: independent frames)",
        "Emitters are drawn once per stack and blink (two-state Markov kinetics) and/or "
        "drift with the stage; the ground truth gains an 'emitter' id column and the "
        "drift per frame goes to NAME_drift.csv.",
    )
    k.add_argument(
        "--blinking",
        action="store_true",
        help="emitters switch on and off; --molecules is then the mean number on per frame",
    )
    k.add_argument(
        "--on-frames",
        type=float,
        default=Default(CONFIG, "on_frames"),
        help="mean on time, frames (default %(default)s)",
    )
    k.add_argument(
        "--off-frames",
        type=float,
        default=Default(CONFIG, "off_frames"),
        help="mean off time, frames (default %(default)s)",
    )
    k.add_argument(
        "--structure",
        choices=["uniform", "rings"],
        default=Default(CONFIG, "structure"),
        help="emitter positions: uniform, or rings of 8 emitters, 50 nm radius "
        "(default %(default)s)",
    )
    k.add_argument(
        "--z-nm",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=Default(CONFIG, "z_nm"),
        help="z range of the sample, nm, e.g. a thin section (default: the whole depth)",
    )
    k.add_argument(
        "--drift-nm",
        type=float,
        nargs="+",
        action="append",
        metavar="D",
        help="stage drift DX DY [DZ] in nm from the first to the last frame, linear; "
        "given again, the next power (quadratic, ...) of a polynomial drift",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_settings_options(p)
    p.set_defaults(func=_cmd_simulate)
