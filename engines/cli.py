"""Engine subcommands: ``train``, ``simulate``, ``localize`` (and the shared microscope options)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engines.config import Geometry, NoiseParams, PSFParams, SimSettings


def add_settings_options(p: argparse.ArgumentParser) -> None:
    """Microscope options shared by train / simulate / evaluate."""
    g = p.add_argument_group("microscope (defaults: paper Tables 2-3)")
    g.add_argument("--planes", type=int, default=None, help="focal planes (2-8, default 4)")
    g.add_argument("--px-nm", type=float, default=None, help="pixel size, nm (default 192)")
    g.add_argument("--dz-nm", type=float, default=None, help="plane spacing, nm (default 400)")
    g.add_argument(
        "--psf",
        type=Path,
        default=None,
        help="PSF: a JSON of PSFParams fields (the Gaussian, e.g. from `voxloc calibrate "
        "psf`) or a spline PSF file (.npz, `voxloc calibrate psf`); `voxloc simulate` "
        "also takes 'vectorial' (the psfmodels microscope, docs/own-microscope.md)",
    )
    g.add_argument(
        "--camera",
        choices=["paper", "emccd", "scmos"],
        default=None,
        help="noise model: paper (Table 3) or a real camera (default paper)",
    )
    g.add_argument(
        "--camera-json",
        type=Path,
        default=None,
        help="NoiseParams JSON (gain, baseline, read noise, ...)",
    )
    g.add_argument(
        "--drift-max-nm",
        type=float,
        default=None,
        help="max per-plane lateral drift vs plane 0, nm (default 48)",
    )


def add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="arithmetic of the network (default: the backend's; auto uses bf16 on "
        "CPUs with native bfloat16, fp32 elsewhere). fp16 needs a GPU",
    )


def settings_from_args(args: argparse.Namespace, base: SimSettings | None = None) -> SimSettings:
    base = base or SimSettings()
    geom = base.geometry.model_dump()
    for field, attr in (("planes", "planes"), ("px_nm", "px_nm"), ("dz_nm", "dz_nm")):
        if getattr(args, attr, None) is not None:
            geom[field] = getattr(args, attr)
    psf = base.psf.model_dump()
    if getattr(args, "psf", None) and Path(args.psf).suffix == ".npz":
        from engines.psf_model import spline_ref

        psf["spline"] = spline_ref(args.psf).model_dump()
    elif getattr(args, "psf", None):
        psf.update(_read_json(args.psf, "psf"))
    noise = base.noise.model_dump()
    if getattr(args, "camera_json", None):
        noise.update(_read_json(args.camera_json, "camera"))
    if getattr(args, "camera", None):
        noise["mode"] = args.camera
    drift = base.drift_max_nm
    if getattr(args, "drift_max_nm", None) is not None:
        drift = args.drift_max_nm
    return SimSettings(
        geometry=Geometry(**geom),
        psf=PSFParams(**psf),
        noise=NoiseParams(**noise),
        drift_max_nm=drift,
        weight_min=base.weight_min,
        weight_max=base.weight_max,
        margin_px=base.margin_px,
    )


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} settings {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"{what} settings {path}: expected a JSON object, got {type(data).__name__}"
        )
    return data.get(what, data) if what == "psf" else data


def _cmd_train(args: argparse.Namespace) -> int:
    from engines.train import TrainConfig, train

    settings = settings_from_args(args)
    cfg = TrainConfig(
        out_dir=args.out,
        name=args.name or args.out.name,
        version=args.model_version,
        steps=args.steps,
        batch=args.batch,
        crop_px=args.crop,
        molecules=tuple(args.molecules),
        lr=args.lr,
        lr_final=args.lr_final if args.lr_final is not None else args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
        device=args.device,
        bf16=args.bf16,
        init_from=args.init,
    )
    out = train(cfg, settings, resume=args.resume)
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
    p.add_argument("--model-version", default="1", help="model version string")
    p.add_argument("--steps", type=int, default=5000, help="optimizer steps")
    p.add_argument("--batch", type=int, default=50, help="frames per step (paper: 50)")
    p.add_argument("--crop", type=int, default=32, help="training frame size, px")
    p.add_argument(
        "--molecules",
        type=int,
        nargs=2,
        default=[5, 90],
        metavar=("LO", "HI"),
        help="molecules per 64x64 frame area, drawn uniformly per frame",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper 1e-3)")
    p.add_argument(
        "--lr-final",
        type=float,
        default=None,
        help="cosine-decay the rate to this value (default: constant)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on new CPUs)")
    p.add_argument(
        "--init",
        default=None,
        metavar="MODEL",
        help="start from this model's weights (e.g. default) instead of random "
        "ones: fine-tuning for your microscope; same planes and layers needed",
    )
    add_settings_options(p)
    p.set_defaults(func=_cmd_train)
    _register_simulate(sub)
    _register_localize(sub)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from engines.io.simstack import SimStackConfig, simulate_stack

    vectorial = str(args.psf) == "vectorial"  # the psfmodels microscope, not a file
    settings = settings_from_args(argparse.Namespace(**{**vars(args), "psf": None}))
    if not vectorial:
        settings = settings_from_args(args)
    settings = settings.model_copy(
        update={"geometry": settings.geometry.with_size(args.size, args.size)}
    )
    psf = None
    if vectorial:
        from engines.vectorial import VectorialPSF

        psf = VectorialPSF(settings)
    cfg = SimStackConfig(
        frames=args.frames,
        molecules=args.molecules,
        seed=args.seed,
        per_plane=args.per_plane,
        dtype=args.dtype,
        drift=not args.no_drift,
        progress=not args.quiet,
    )
    res = simulate_stack(args.out, settings, cfg, psf=psf)
    shape = "x".join(map(str, res.shape))
    print(
        f"wrote {', '.join(map(str, res.stacks))} ({shape} TZYX {res.dtype}) and "
        f"ground truth {res.truth} ({res.molecules} molecules)"
    )
    return 0


def _register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a simulated test stack and its ground truth",
        description="Simulate frames with the paper's observation model and "
        "write an ImageJ TZYX TIFF (or one TIFF per plane) plus the ground "
        "truth as NAME_truth.csv (localization CSV format + weight column).",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="stack TIFF to write")
    p.add_argument("--frames", type=int, default=20, help="frames (time points, default 20)")
    p.add_argument(
        "--molecules",
        type=int,
        default=50,
        help="mean molecules per frame (default 50, paper Table 3)",
    )
    p.add_argument("--size", type=int, default=64, help="frame height and width, px (64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument(
        "--per-plane",
        action="store_true",
        help="one TIFF per plane: NAME_plane0.tif, NAME_plane1.tif, ...",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "uint16", "float32"],
        default="auto",
        help="pixel type (auto: float32 for paper noise, uint16 for cameras; "
        "uint16 rounds and clips to [0, 65535])",
    )
    p.add_argument("--no-drift", action="store_true", help="no per-plane lateral drift")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_settings_options(p)
    p.set_defaults(func=_cmd_simulate)


def _cmd_localize(args: argparse.Namespace) -> int:
    from engines.localize import LocalizeOptions, localize_files

    opts = LocalizeOptions(
        model=args.model,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        threshold=args.threshold,
        batch=args.batch,
        px_nm=args.px_nm,
        dz_nm=args.dz_nm,
        progress=not args.quiet,
    )
    res = localize_files(args.inputs, args.out, opts)
    rate = res.frames / res.seconds if res.seconds > 0 else float("inf")
    print(
        f"{res.localizations} localizations in {res.frames} frames -> {res.output} "
        f"(model {res.model} v{res.model_version}, {res.backend}, {rate:.1f} frames/s)"
    )
    return 0


def _register_localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localize",
        help="localize molecules in a TIFF stack",
        description="Localize every frame of a TZYX/TCYX TIFF (or one TIFF per "
        "plane, in plane order) and write a ThunderSTORM CSV (.csv) or a "
        "Picasso HDF5 + yaml (.h5). Streams in batches; the output appears "
        "only when the whole stack is done.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="one multi-plane TIFF, or one TIFF per plane",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="OUT.csv or OUT.h5")
    p.add_argument(
        "--model",
        default="default",
        help="model name or directory (default: the shipped 'default')",
    )
    p.add_argument(
        "--threshold", type=float, default=0.5, help="confidence threshold tau (default 0.5)"
    )
    p.add_argument("--batch", type=int, default=16, help="frames per inference batch (16)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="inference backend (auto: the fastest this machine runs)",
    )
    p.add_argument("--device", default=None, help="device for the backend (cpu, cuda)")
    add_precision_option(p)
    p.add_argument(
        "--px-nm",
        type=float,
        default=None,
        help="your camera pixel size, nm (default: the model's). Positions are "
        "rescaled from the model's pixel grid; the network itself still sees "
        "pixels, so this is right only if your PSF in pixels matches the model's",
    )
    p.add_argument(
        "--dz-nm",
        type=float,
        default=None,
        help="your plane spacing, nm (default: the model's); z is rescaled the same way",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_localize)
