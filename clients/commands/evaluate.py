"""``voxloc evaluate``: the paper's Table 4 protocol on simulated frames, with a report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from clients.commands.options import Default, add_precision_option, build

if TYPE_CHECKING:
    from engines.evaluate.runner import EvalConfig

CONFIG = "engines.evaluate.runner:EvalConfig"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from engines.evaluate.protocol import REPORT_JSON, run_evaluation
    from engines.evaluate.report import format_table, record_metrics
    from engines.evaluate.runner import EvalConfig

    cfg = build(
        EvalConfig,
        args,
        dict(
            model="model",
            frames="frames",
            molecules="molecules",
            size="size",
            seed="seed",
            thresholds="thresholds",
            backend="backend",
            low_density_molecules="low_molecules",
            low_density_frames="low_frames",
            densities="densities",
            sweep_frames="sweep_frames",
            crlb_samples="crlb_samples",
            test_psf="test_psf",
            refine="refine",
        ),
        precision=args.precision,
    )
    if args.calibrate_precision:
        from engines.evaluate.calibrate import calibrate_precision, format_calibration

        command = _calibration_command(cfg)
        record = calibrate_precision(cfg, command=command)
        print(format_calibration(record))
        print(f"\nprecision calibration recorded in {cfg.model}'s model.json")
        return 0
    out_dir = args.out or Path(f"evaluation-{Path(str(cfg.model)).name}-{cfg.size}")
    report = run_evaluation(cfg, out_dir)
    print(format_table(report))
    print(f"\nreport written to {out_dir / REPORT_JSON}")
    if args.record:
        key = record_metrics(Path(report["model"]["dir"]), report)
        print(f"metrics recorded in {Path(report['model']['dir']) / 'model.json'} under {key!r}")
    return 0


def _calibration_command(cfg: EvalConfig) -> str:
    """The command line that reruns this calibration (recorded in model.json)."""
    args = [
        "voxloc evaluate --calibrate-precision",
        f"--model {shlex.quote(str(cfg.model))}",
        f"--backend {cfg.backend}",
        f"--frames {cfg.frames}",
        f"--size {cfg.size}",
        f"--molecules {cfg.molecules}",
        f"--low-molecules {cfg.low_density_molecules}",
        f"--seed {cfg.seed}",
        "--thresholds " + " ".join(f"{t:g}" for t in cfg.thresholds),
    ]
    return " ".join(args + (["--refine"] if cfg.refine else []))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model's accuracy on simulated frames (paper Table 4)",
        description="Evaluate a model on frames simulated with its own microscope settings: "
        "voxel confusion matrix (Table 4), molecule Jaccard / RMSE / bias / efficiency "
        "(greedy matching within 250 nm lateral, 500 nm axial), a low-density set against "
        "the Cramer-Rao bound, and a density sweep (Figs. 7-8). Prints a table and writes "
        "REPORT_DIR/report.json plus PNG figures.",
    )
    p.add_argument(
        "--model",
        default=Default(CONFIG, "model"),
        help="model name or directory (default: %(default)s)",
    )
    p.add_argument(
        "--frames",
        type=int,
        default=Default(CONFIG, "frames"),
        help="test frames (paper: 500; default %(default)s)",
    )
    p.add_argument(
        "--molecules",
        type=int,
        default=Default(CONFIG, "molecules"),
        help="molecules per 64x64 area (paper: 50; default %(default)s); scaled with --size",
    )
    p.add_argument(
        "--size",
        type=int,
        default=Default(CONFIG, "size"),
        help="frame height and width, px (the density per area stays the same; "
        "default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=Default(CONFIG, "seed"))
    p.add_argument(
        "--test-psf",
        default=None,
        metavar="PSF",
        help="draw the test frames from this PSF instead of the model's own: 'vectorial' "
        "(psfmodels microscope, docs/own-microscope.md) or a spline PSF file (.npz)",
    )
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=Default(CONFIG, "thresholds"),
        help="confidence thresholds tau (paper: 0.5 0.9; default %(default)s)",
    )
    p.add_argument(
        "--backend",
        default=Default(CONFIG, "backend"),
        help="inference backend: auto, torch, onnxruntime, tensorrt (default %(default)s)",
    )
    add_precision_option(p)
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="report directory (default: ./evaluation-MODEL-SIZE)",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="store the summary metrics in the model directory's model.json",
    )
    p.add_argument(
        "--calibrate-precision",
        action="store_true",
        help="instead of the protocol: fit the model's per-localization precision "
        "(calibrated Cramer-Rao bound, docs/photometry.md) on --frames frames of "
        "--low-molecules to --molecules per 64x64, check it on independent frames, and "
        "record it in model.json",
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="localize as voxloc localize --refine does (positions refined with each "
        "frame's plane shifts); with --calibrate-precision: calibrate the precision of "
        "refined positions (model.json precision.refined; the network's calibration "
        "must exist)",
    )
    g = p.add_argument_group("extra test sets")
    g.add_argument(
        "--low-molecules",
        type=int,
        default=Default(CONFIG, "low_density_molecules"),
        help="molecules per 64x64 area of the no-drift set compared with the CRLB "
        "(default %(default)s)",
    )
    g.add_argument(
        "--low-frames",
        type=int,
        default=Default(CONFIG, "low_density_frames"),
        help="frames of the low-density set (0: skip it and the CRLB; default %(default)s)",
    )
    g.add_argument(
        "--densities",
        type=int,
        nargs="+",
        default=Default(CONFIG, "densities"),
        help="molecules per 64x64 area of the density sweep (default %(default)s)",
    )
    g.add_argument(
        "--sweep-frames",
        type=int,
        default=Default(CONFIG, "sweep_frames"),
        help="frames per density (0: skip the sweep and its plots; default %(default)s)",
    )
    g.add_argument(
        "--crlb-samples",
        type=int,
        default=Default(CONFIG, "crlb_samples"),
        help="random molecules the CRLB is averaged over (default %(default)s)",
    )
    p.set_defaults(func=_cmd_evaluate)
