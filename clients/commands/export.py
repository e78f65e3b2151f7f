"""Engine subcommands: ``export`` (ONNX) and ``build-engine`` (TensorRT)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write model.onnx (dynamic batch and HxW, decoding in the graph)",
        description="Export a model to ONNX with the threshold as a runtime input and the "
        "threshold+gather inside the graph. Writes <model dir>/model.onnx unless -o is given.",
    )
    p.add_argument("model", nargs="?", default="default", help="model name or directory")
    p.add_argument("-o", "--output", type=Path, default=None, help="output .onnx path")
    p.add_argument("--force", action="store_true", help="export even if up to date")
    p.set_defaults(func=_cmd_export)

    b = sub.add_parser(
        "build-engine",
        help="build and cache the TensorRT engine (needs voxloc[tensorrt])",
        description="Build a TensorRT engine from the model's ONNX for one optimisation "
        "profile and precision, and cache it (keyed by TensorRT version, GPU, profile, "
        "precision). Frames must fall inside the profile at run time.",
    )
    b.add_argument("model", nargs="?", default="default", help="model name or directory")
    b.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    b.add_argument("--device", default="cuda", help="CUDA device (default cuda)")
    for name, default in (("batch", (1, 8, 32)), ("size", (16, 256, 1024))):
        for which, value in zip(("min", "opt", "max"), default, strict=True):
            unit = "frames" if name == "batch" else "px, height and width"
            b.add_argument(
                f"--{which}-{name}",
                type=int,
                default=value,
                help=f"{which} {name} of the profile ({unit}; default {value})",
            )
    b.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="engine cache folder (default <model dir>/engines or the user cache)",
    )
    b.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    b.set_defaults(func=_cmd_build_engine)


def _cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx

    path = export_onnx(args.model, args.output, force=args.force)
    print(path)
    return 0


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from engines.inference.engine_cache import Profile

    profile = Profile(
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        min_size=args.min_size,
        opt_size=args.opt_size,
        max_size=args.max_size,
    )
    from engines.inference.tensorrt_backend import build_engine

    path = build_engine(
        args.model,
        precision=args.precision,
        profile=profile,
        device=args.device,
        cache_dir=args.cache_dir,
        rebuild=args.rebuild,
    )
    print(path)
    return 0
