"""``voxloc train``: train a model on frames simulated on the fly."""

from __future__ import annotations

import argparse
from pathlib import Path

from clients.commands.options import Default, add_settings_options, given, settings_from_args

CONFIG = "engines.train:TrainConfig"


def _cmd_train(args: argparse.Namespace) -> int:
    from engines.train import TrainConfig, train

    options = given(
        args,
        version="model_version",
        steps="steps",
        batch="batch",
        crop_px="crop",
        molecules="molecules",
        lr="lr",
        lr_final="lr_final",
        seed="seed",
        checkpoint_every="checkpoint_every",
        threads="threads",
        device="device",
        init_from="init",
    )
    # without --lr-final the rate stays constant at --lr
    options.setdefault("lr_final", options.get("lr", Default(CONFIG, "lr").value))
    cfg = TrainConfig(out_dir=args.out, name=args.name or args.out.name, bf16=args.bf16, **options)
    out = train(cfg, settings_from_args(args), resume=args.resume)
    print(f"model written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on simulated frames",
        description="Train the voxel-wise regression FCN on frames simulated "
        "on the fly; writes a model directory (weights.pt + model.json).",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--name", default=None, help="model name (default: directory name)")
    p.add_argument(
        "--model-version", default=Default(CONFIG, "version"), help="model version string"
    )
    p.add_argument("--steps", type=int, default=Default(CONFIG, "steps"), help="optimizer steps")
    p.add_argument(
        "--batch",
        type=int,
        default=Default(CONFIG, "batch"),
        help="frames per step (paper: 50; default %(default)s)",
    )
    p.add_argument(
        "--crop",
        type=int,
        default=Default(CONFIG, "crop_px"),
        help="training frame size, px (default %(default)s)",
    )
    p.add_argument(
        "--molecules",
        type=int,
        nargs=2,
        default=Default(CONFIG, "molecules"),
        metavar=("LO", "HI"),
        help="molecules per 64x64 frame area, drawn uniformly per frame (default %(default)s)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=Default(CONFIG, "lr"),
        help="Adam learning rate (paper 1e-3; default %(default)s)",
    )
    p.add_argument(
        "--lr-final",
        type=float,
        default=Default(CONFIG, "lr_final"),
        help="cosine-decay the rate to this value (default: constant)",
    )
    p.add_argument("--seed", type=int, default=Default(CONFIG, "seed"))
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=Default(CONFIG, "checkpoint_every"),
        help="steps between checkpoints (default %(default)s)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--threads", type=int, default=Default(CONFIG, "threads"), help="torch CPU threads"
    )
    p.add_argument(
        "--device",
        default=Default(CONFIG, "device"),
        help="torch device (cpu, cuda; default %(default)s)",
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on new CPUs)")
    p.add_argument(
        "--init",
        default=Default(CONFIG, "init_from"),
        metavar="MODEL",
        help="start from this model's weights (e.g. default) instead of random "
        "ones: fine-tuning for your microscope; same planes and layers needed",
    )
    add_settings_options(p)
    p.set_defaults(func=_cmd_train)
