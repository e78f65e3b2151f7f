"""``voxloc build-engine``: build and cache a model's TensorRT engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.commands.options import Default, given

PROFILE = "engines.inference.engine_cache:Profile"
PROFILE_FIELDS = [
    f"{which}_{name}" for name in ("batch", "size") for which in ("min", "opt", "max")
]


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from engines.inference.engine_cache import Profile

    # a bad profile is refused before TensorRT is looked for
    profile = Profile(**given(args, **{f: f for f in PROFILE_FIELDS}))
    from engines.inference.tensorrt_backend import build_engine

    path = build_engine(
        args.model,
        precision=args.precision,
        device=args.device,
        profile=profile,
        cache_dir=args.cache_dir,
        rebuild=args.rebuild,
    )
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "build-engine",
        help="build and cache the TensorRT engine (needs voxloc[tensorrt])",
        description="Build a TensorRT engine from the model's ONNX for one optimisation "
        "profile and precision, and cache it (keyed by TensorRT version, GPU, profile, "
        "precision). Frames must fall inside the profile at run time.",
    )
    b.add_argument("model", nargs="?", default="default", help="model name or directory")
    # build_engine's own defaults; its module cannot be imported without TensorRT
    b.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    b.add_argument("--device", default="cuda", help="CUDA device (default %(default)s)")
    for field in PROFILE_FIELDS:
        which, name = field.split("_")
        unit = "frames" if name == "batch" else "px, height and width"
        b.add_argument(
            f"--{which}-{name}",
            type=int,
            default=Default(PROFILE, field),
            help=f"{which} {name} of the profile ({unit}; default %(default)s)",
        )
    b.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="engine cache folder (default <model dir>/engines or the user cache)",
    )
    b.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    b.set_defaults(func=_cmd_build_engine)
