"""``voxloc evaluate``: the paper's Table 4 protocol on simulated frames, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from engines.cli import add_precision_option


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from engines.evaluate.protocol import REPORT_JSON, run_evaluation
    from engines.evaluate.report import format_table, record_metrics
    from engines.evaluate.runner import EvalConfig

    cfg = EvalConfig(
        model=args.model,
        frames=args.frames,
        molecules=args.molecules,
        size=args.size,
        seed=args.seed,
        thresholds=tuple(args.thresholds),
        backend=args.backend,
        precision=args.precision,
        low_density_molecules=args.low_molecules,
        low_density_frames=args.low_frames,
        densities=tuple(args.densities),
        sweep_frames=args.sweep_frames,
        crlb_samples=args.crlb_samples,
        test_psf=args.test_psf,
    )
    out_dir = args.out or Path(f"evaluation-{Path(str(args.model)).name}-{args.size}")
    report = run_evaluation(cfg, out_dir)
    print(format_table(report))
    print(f"\nreport written to {out_dir / REPORT_JSON}")
    if args.record:
        key = record_metrics(Path(report["model"]["dir"]), report)
        print(f"metrics recorded in {Path(report['model']['dir']) / 'model.json'} under {key!r}")
    return 0


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
    p.add_argument("--model", default="default", help="model name or directory (default: default)")
    p.add_argument("--frames", type=int, default=500, help="test frames (paper: 500)")
    p.add_argument(
        "--molecules",
        type=int,
        default=50,
        help="molecules per 64x64 area (paper: 50); scaled with --size",
    )
    p.add_argument(
        "--size",
        type=int,
        default=64,
        help="frame height and width, px (the density per area stays the same)",
    )
    p.add_argument("--seed", type=int, default=0)
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
        default=[0.5, 0.9],
        help="confidence thresholds tau (paper: 0.5 0.9)",
    )
    p.add_argument(
        "--backend", default="auto", help="inference backend: auto, torch, onnxruntime, tensorrt"
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
    g = p.add_argument_group("extra test sets")
    g.add_argument(
        "--low-molecules",
        type=int,
        default=10,
        help="molecules per 64x64 area of the no-drift set compared with the CRLB",
    )
    g.add_argument(
        "--low-frames",
        type=int,
        default=200,
        help="frames of the low-density set (0: skip it and the CRLB)",
    )
    g.add_argument(
        "--densities",
        type=int,
        nargs="+",
        default=[5, 10, 25, 50, 100, 150],
        help="molecules per 64x64 area of the density sweep",
    )
    g.add_argument(
        "--sweep-frames",
        type=int,
        default=100,
        help="frames per density (0: skip the sweep and its plots)",
    )
    g.add_argument(
        "--crlb-samples", type=int, default=500, help="random molecules the CRLB is averaged over"
    )
    p.set_defaults(func=_cmd_evaluate)
