"""``voxloc localize``: localize every frame of a TIFF stack into a CSV / HDF5 table."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.commands.options import Default, add_precision_option, build

CONFIG = "engines.localize:LocalizeOptions"


def _cmd_localize(args: argparse.Namespace) -> int:
    from engines.localize import LocalizeOptions, localize_files

    opts = build(
        LocalizeOptions,
        args,
        dict(
            model="model",
            backend="backend",
            device="device",
            threshold="threshold",
            batch="batch",
            px_nm="px_nm",
            dz_nm="dz_nm",
        ),
        precision=args.precision,
        refine=args.refine,
        progress=not args.quiet,
    )
    from clients.cluster.command import cluster_requested, run_cluster_command

    if cluster_requested(args):
        return run_cluster_command(args, opts)
    res = localize_files(args.inputs, args.out, opts)
    rate = res.frames / res.seconds if res.seconds > 0 else float("inf")
    print(
        f"{res.localizations} localizations in {res.frames} frames -> {res.output} "
        f"(model {res.model} v{res.model_version}, {res.backend}, {rate:.1f} frames/s)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localize",
        help="localize molecules in a TIFF stack",
        description="Localize every frame of a TZYX/TCYX TIFF (or one TIFF per "
        "plane, in plane order) and write a ThunderSTORM CSV (.csv), a "
        "Picasso HDF5 + yaml (.h5) or an SMLM file (.smlm), each with photons, "
        "background and precision per localization (docs/formats.md). Streams in "
        "batches; the output appears only when the whole stack is done.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="one multi-plane TIFF, or one TIFF per plane; with --workers/--scheduler "
        "also many stacks: files, folders, globs",
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="OUT.csv, OUT.h5 or OUT.smlm; with --workers/--scheduler also a folder for "
        "many inputs",
    )
    p.add_argument(
        "--model",
        default=Default(CONFIG, "model"),
        help="model name or directory (default: the shipped '%(default)s')",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=Default(CONFIG, "threshold"),
        help="confidence threshold tau (default %(default)s)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=Default(CONFIG, "batch"),
        help="frames per inference batch (%(default)s)",
    )
    p.add_argument(
        "--backend",
        default=Default(CONFIG, "backend"),
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="inference backend (auto: the fastest this machine runs)",
    )
    p.add_argument(
        "--device", default=Default(CONFIG, "device"), help="device for the backend (cpu, cuda)"
    )
    add_precision_option(p)
    p.add_argument(
        "--px-nm",
        type=float,
        default=Default(CONFIG, "px_nm"),
        help="your camera pixel size, nm (default: the model's). Positions are "
        "rescaled from the model's pixel grid; the network itself still sees "
        "pixels, so this is right only if your PSF in pixels matches the model's",
    )
    p.add_argument(
        "--dz-nm",
        type=float,
        default=Default(CONFIG, "dz_nm"),
        help="your plane spacing, nm (default: the model's); z is rescaled the same way",
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="refine each position by Gauss-Newton steps of the photometry fit with the "
        "model's PSF, fitting each frame's plane shifts against plane 0 where the model "
        "has a per-plane drift: about half the network's lateral error, 0.75x in z; the "
        "reported precision stays the network's (conservative). docs/photometry.md. "
        "Off by default",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from clients.cluster.command import add_cluster_options  # --workers, --scheduler

    add_cluster_options(p)
    p.set_defaults(func=_cmd_localize)
