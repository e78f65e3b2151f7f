"""``voxloc evaluate --calibrate-precision``: fit a model's precision calibration, check it on
independent frames, record it in ``model.json`` (:mod:`engines.precision`).

The constants are fitted on the low-density set of the Table 4 protocol (``low_density_*``
of :class:`~engines.evaluate.runner.EvalConfig`: 10 molecules per 64x64, no drift, frames
from the model's own settings) and checked on a second set of the same kind with another
seed, and on the main protocol's density (``molecules``, drift on), where neighbours
overlap and the calibrated bound is optimistic (docs/photometry.md).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines.evaluate.runner import EvalConfig, Evaluator
from engines.io.atomic import write_json
from engines.modeldir import MODEL_JSON
from engines.precision import AXES, PrecisionCalibration, calibration_ok, fit_axis

log = logging.getLogger(__name__)

SEED_OFFSETS = {"fit": 10, "check": 11, "check_dense": 12}


def calibrate_precision(cfg: EvalConfig, *, command: str, main_frames: int = 100) -> dict[str, Any]:
    """Fit, check and record the precision calibration of ``cfg.model``; returns the
    record (also written to ``model.json`` under ``"precision"``)."""
    if cfg.low_density_frames == 0:
        raise ValueError("the precision calibration needs low-density frames (--low-frames > 0)")
    ev = Evaluator(cfg)
    try:
        record = _calibrate(ev, command, main_frames)
    finally:
        ev.close()
    _store(ev.model_dir, record)
    return record


def _calibrate(ev: Evaluator, command: str, main_frames: int) -> dict[str, Any]:
    cfg = ev.cfg
    low = cfg.per_frame(cfg.low_density_molecules)
    seeds = {k: cfg.seed + v for k, v in SEED_OFFSETS.items()}
    fit_set = ev.run_set(
        frames=cfg.low_density_frames, molecules=low, seed=seeds["fit"], drift=False, voxels=False
    )
    assert fit_set.photometry is not None
    err = fit_set.photometry.column("error_nm", 3)
    crlb = fit_set.photometry.column("crlb_nm", 3)
    constants = [fit_axis(err[:, a], crlb[:, a]) for a in range(3)]
    cal = PrecisionCalibration(
        k=(constants[0][0], constants[1][0], constants[2][0]),
        floor_nm=(constants[0][1], constants[1][1], constants[2][1]),
        window_px=ev.engine.photometry.side,
    )
    ev.engine.calibration = cal  # the check sets run with it, as a loaded model would
    check = ev.run_set(
        frames=cfg.low_density_frames, molecules=low, seed=seeds["check"], drift=False, voxels=False
    )
    assert check.photometry is not None
    figures: dict[str, Any] = {"low_density": check.photometry.to_dict()}
    if main_frames:
        dense = ev.run_set(
            frames=main_frames,
            molecules=cfg.per_frame(cfg.molecules),
            seed=seeds["check_dense"],
            drift=True,
            voxels=False,
        )
        assert dense.photometry is not None
        figures["main_density"] = dense.photometry.to_dict()
    meets = calibration_ok(figures["low_density"].get("precision", {}))
    return {
        **cal.model_dump(mode="json"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "backend": ev.engine.label,
        "threshold": cfg.thresholds[0],
        "seeds": seeds,
        "fit_set": {
            "frames": cfg.low_density_frames,
            "molecules_per_frame": low,
            "size": cfg.size,
            "drift": False,
            "matched": int(err.shape[0]),
        },
        "check_sets": {
            "low_density": {"frames": cfg.low_density_frames, "molecules_per_frame": low},
            "main_density": {
                "frames": main_frames,
                "molecules_per_frame": cfg.per_frame(cfg.molecules),
                "drift": True,
            },
        },
        "meets_acceptance_low_density": meets,
        "figures": figures,
    }


def _store(model_dir: Path, record: dict[str, Any]) -> None:
    """Set ``"precision"`` in ``model.json``, the rest of the file as it is (a spline
    path stays relative to the model directory)."""
    path = Path(model_dir) / MODEL_JSON
    doc = json.loads(path.read_text())
    doc["precision"] = record
    write_json(path, doc)
    log.info("precision calibration recorded in %s", path)


def format_calibration(record: dict[str, Any]) -> str:
    """Printed summary: the constants and the check figures per axis."""
    lines = [
        f"precision calibration ({record['method']}), fitted on "
        f"{record['fit_set']['matched']} matched localizations "
        f"({record['fit_set']['frames']} frames, {record['fit_set']['molecules_per_frame']} "
        f"molecules/frame, no drift):",
    ]
    for a, name in enumerate(AXES):
        lines.append(f"  {name}: k = {record['k'][a]:.3f}, floor = {record['floor_nm'][a]:.2f} nm")
    for key, fig in record["figures"].items():
        lines.append(f"check, {key.replace('_', ' ')}:")
        lines.append(
            f"  photons/true (isolated, median) {_f(fig.get('photon_ratio_median_isolated'))}, "
            f"background {_f(fig.get('background_median_isolated'))} "
            f"(true {_f(fig.get('background_true'))})"
        )
        for name in AXES:
            p = fig.get("precision", {}).get(name, {})
            if "fraction_within_1_sigma" in p:
                ratios = " ".join(f"{r:.2f}" for r in p["rms_error_over_rms_sigma_by_quintile"])
                lines.append(
                    f"  {name}: |error| <= sigma for {p['fraction_within_1_sigma']:.3f}; "
                    f"rms error / rms sigma by quintile of sigma: {ratios}"
                )
    ok = record["meets_acceptance_low_density"]
    lines.append(
        "acceptance (0.68 +- 0.05 within sigma, every quintile within 25 %) at low density: "
        + ("met" if ok else "NOT met")
    )
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
