"""``run_evaluation``: the whole protocol of ``voxloc evaluate`` -> report dict + files."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from engines.evaluate.crlb import average_crlb, voxel_jaccard_ceiling
from engines.evaluate.matching import AXIAL_TOL_NM, LATERAL_TOL_NM
from engines.evaluate.plots import plot_error_histograms, plot_jaccard_vs_density
from engines.evaluate.report import (
    REPORT_VERSION,
    low_density_section,
    sweep_section,
    threshold_rows,
    write_json,
)
from engines.evaluate.runner import EvalConfig, Evaluator, seeds, sweep

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"


def prepare_output(out_dir: Path) -> Path:
    """Create the report directory; refuse a path that is a file."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"report directory {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _header(ev: Evaluator) -> dict[str, Any]:
    cfg, info = ev.cfg, ev.info
    return {
        "format_version": REPORT_VERSION,
        "model": {
            "name": info.name,
            "version": info.version,
            "dir": str(ev.model_dir),
            "training_steps_done": info.training.get("steps_done"),
        },
        "backend": ev.engine.label,
        "protocol": {
            "frames": cfg.frames,
            "size": cfg.size,
            "planes": ev.settings.geometry.planes,
            "molecules_per_64x64": cfg.molecules,
            "molecules_per_frame": cfg.per_frame(cfg.molecules),
            "density_per_um3": ev.density_um3(cfg.per_frame(cfg.molecules)),
            "seed": cfg.seed,
            "seeds": seeds(cfg.seed),
            "drift": True,
            "frames_psf": cfg.test_psf or "the model's own",
            "margin_px": 0,
            "thresholds": list(cfg.thresholds),
            "lateral_tol_nm": LATERAL_TOL_NM,
            "axial_tol_nm": AXIAL_TOL_NM,
            "matching": "greedy nearest-first (3D distance), one-to-one, SMLM challenge 2016",
        },
    }


def run_evaluation(cfg: EvalConfig, out_dir: Path) -> dict[str, Any]:
    """Run the main set, the low-density set with its CRLB and the density sweep;
    write ``report.json`` and the PNG figures into ``out_dir``; return the report."""
    t0 = time.perf_counter()
    ev = Evaluator(cfg)  # first, so a bad model leaves no report directory behind
    try:
        report = _run_sets(ev, prepare_output(out_dir))
    finally:
        ev.close()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out_dir = Path(out_dir)
    write_json(report, out_dir / REPORT_JSON)
    log.info("report written to %s", out_dir / REPORT_JSON)
    return report


def _run_sets(ev: Evaluator, out_dir: Path) -> dict[str, Any]:
    cfg = ev.cfg
    report = _header(ev)
    s = seeds(cfg.seed)
    main = ev.run_set(
        frames=cfg.frames, molecules=cfg.per_frame(cfg.molecules), seed=s["main"], drift=True
    )
    report["results"] = threshold_rows(main)
    if main.photometry is not None:
        report["photometry"] = main.photometry.to_dict()
    if cfg.low_density_frames:
        low = ev.run_set(
            frames=cfg.low_density_frames,
            molecules=cfg.per_frame(cfg.low_density_molecules),
            seed=s["low_density"],
            drift=False,
        )
        crlb = average_crlb(ev.settings, samples=cfg.crlb_samples, seed=s["crlb"])
        shot = (
            average_crlb(ev.settings, samples=cfg.crlb_samples, seed=s["crlb"], shot_noise=True)
            if ev.settings.noise.to_camera().additive_noise
            else None
        )
        ceiling = voxel_jaccard_ceiling(ev.settings, seed=s["crlb"])
        report["low_density"] = low_density_section(low, crlb, shot, ceiling)
        if low.photometry is not None:
            report["low_density"]["photometry"] = low.photometry.to_dict()
    points = [(d, ev.density_um3(r.molecules_per_frame), r) for d, r in sweep(ev)]
    report["density_sweep"] = sweep_section(points)
    report["plots"] = {}
    if points:
        dens_points = [(dens, r) for _, dens, r in points]
        report["plots"]["jaccard_vs_density"] = plot_jaccard_vs_density(
            dens_points, cfg.thresholds, out_dir / "jaccard_vs_density.png"
        ).name
        report["plots"]["error_histograms"] = plot_error_histograms(
            dens_points[0], dens_points[-1], cfg.thresholds, out_dir / "error_histograms.png"
        ).name
    return report
