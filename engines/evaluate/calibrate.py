"""``voxloc evaluate --calibrate-precision``: fit a model's precision calibration, check it on
independent frames, record it in ``model.json`` (:mod:`engines.precision`).

The constants are fitted on frames drawn from the model's own settings as they are
(per-plane drift on), with a density drawn per frame between the Table 4 protocol's low
and main densities (``low_density_molecules`` .. ``molecules`` per 64x64), so that the
crowding term sees close neighbours and lone molecules alike. They are checked on
independent frames (other seeds) at the low density and at the main density, drift on,
and at the low density without drift (the Table 4 low-density set), where the reported
sigma is conservative (docs/photometry.md).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.evaluate.runner import EvalConfig, Evaluator
from engines.io.atomic import write_json
from engines.modeldir import MODEL_JSON
from engines.precision import (
    AXES,
    CHI2_AXES,
    CHI2_GATE,
    AxisFit,
    PrecisionCalibration,
    calibration_ok,
    fit_axis,
    fit_chi2_term,
    fit_chi2_weight,
)

log = logging.getLogger(__name__)

SEED_OFFSETS = {"fit": 10, "low_density": 11, "main_density": 12, "low_density_no_drift": 13}


def calibrate_precision(cfg: EvalConfig, *, command: str) -> dict[str, Any]:
    """Fit, check and record the precision calibration of ``cfg.model`` on sets of
    ``cfg.frames`` frames; returns the record (also written to ``model.json`` under
    ``"precision"``)."""
    ev = Evaluator(cfg)
    try:
        if cfg.refine and ev.engine.calibration is None:
            raise ValueError(
                "calibrate the network's precision first (voxloc evaluate "
                "--calibrate-precision without --refine): refined positions keep the "
                "network's where the window model does not fit"
            )
        ev.engine.warn_uncalibrated_refine = False  # this run makes that calibration
        record = _calibrate(ev, command, cfg.frames)
    finally:
        ev.close()
    _store(ev.model_dir, record, refined=cfg.refine)
    return record


def _calibrate(ev: Evaluator, command: str, frames: int) -> dict[str, Any]:
    cfg = ev.cfg
    low, main = cfg.per_frame(cfg.low_density_molecules), cfg.per_frame(cfg.molecules)
    seeds = {k: cfg.seed + v for k, v in SEED_OFFSETS.items()}
    fit_set = ev.run_set(
        frames=frames, molecules=(low, main), seed=seeds["fit"], drift=True, voxels=False
    )
    assert fit_set.photometry is not None
    cols = fit_set.photometry
    err, crlb = cols.column("error_nm", 3), cols.column("crlb_nm", 3)
    near, step = cols.column("neighbour_nm"), cols.column("step_nm", 3)
    k, floor, crowding, weight = zip(*_axis_fits(err, crlb, near, step), strict=True)
    cal = PrecisionCalibration(
        k=k,
        floor_nm=floor,
        crowding_nm=crowding,
        step_weight=weight,
        window_px=ev.engine.photometry.side,
    )
    cal = _with_chi2(cal, err, crlb, near, step, cols.column("chi2"), refined=cfg.refine)
    # the check sets run with it, as a loaded model would
    base = ev.engine.calibration
    if cfg.refine and base is not None:
        ev.engine.calibration = base.model_copy(update={"refined": cal})
    else:
        ev.engine.calibration = cal
    checks = {
        "low_density": (low, True),
        "main_density": (main, True),
        "low_density_no_drift": (low, False),
    }
    figures: dict[str, Any] = {}
    for name, (molecules, drift) in checks.items():
        res = ev.run_set(
            frames=frames, molecules=molecules, seed=seeds[name], drift=drift, voxels=False
        )
        assert res.photometry is not None
        figures[name] = {
            "molecules_per_frame": molecules,
            "drift": drift,
            **res.photometry.to_dict(),
        }
    meets = {name: calibration_ok(f.get("precision", {})) for name, f in figures.items()}
    return {
        **cal.model_dump(mode="json"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "backend": ev.engine.label,
        "positions": "refined (voxloc localize --refine)" if cfg.refine else "the network's",
        "threshold": cfg.thresholds[0],
        "seeds": seeds,
        "frames_per_set": frames,
        "size": cfg.size,
        "fit_set": {
            "lateral": "x and y pooled",
            "molecules_per_frame": [low, main],
            "drift": True,
            "matched": int(err.shape[0]),
        },
        "meets_acceptance": meets,
        "figures": figures,
    }


def _axis_fits(
    err: np.ndarray, crlb: np.ndarray, near: np.ndarray, step: np.ndarray
) -> list[AxisFit]:
    """The constants of x, y and z; the step term for z only. x and y share theirs: the
    network's excess over the bound and the settings' drift are the same in both lateral
    directions (each axis keeps its own bound), and one fit through both halves the noise
    of the cells, which separately gave the vectorial model k 2.17 / 1.75 and crowding
    16.7 / 13.8 nm for x / y of a laterally symmetric PSF (docs/photometry.md)."""
    lateral = fit_axis(
        np.concatenate([err[:, 0], err[:, 1]]),
        np.concatenate([crlb[:, 0], crlb[:, 1]]),
        np.concatenate([near, near]),
    )
    axial = fit_axis(err[:, 2], crlb[:, 2], near, step_nm=step[:, 2])
    return [lateral, lateral, axial]


def _with_chi2(
    cal: PrecisionCalibration,
    err: np.ndarray,
    crlb: np.ndarray,
    near: np.ndarray,
    step: np.ndarray,
    chi2: np.ndarray,
    *,
    refined: bool,
) -> PrecisionCalibration:
    """``cal`` with its chi^2 term chosen on the fit set, the other constants as fitted; x
    and y share theirs, chosen on both axes' errors (as their other constants,
    :func:`_axis_fits`). The network's: the weight of each of :data:`CHI2_AXES`
    (:func:`fit_chi2_weight`). Refined positions: gate, exponent, weight and a factor on
    the other constants per axis (:func:`fit_chi2_term`)."""
    t = torch.from_numpy
    sigma = cal.apply(t(crlb), t(near), t(step)).numpy()

    def lateral(fit: Any) -> Any:
        pair = [np.concatenate([v[:, 0], v[:, 1]]) for v in (err, sigma)]
        return fit(*pair, np.concatenate([chi2, chi2]))

    if not refined:
        w = lateral(fit_chi2_weight) if "x" in CHI2_AXES else 0.0
        axial = fit_chi2_weight(err[:, 2], sigma[:, 2], chi2) if "z" in CHI2_AXES else 0.0
        return cal.model_copy(update={"chi2_weight_nm": (w, w, axial)})
    side = lateral(fit_chi2_term)
    terms = (side, side, fit_chi2_term(err[:, 2], sigma[:, 2], chi2))
    scale = [term.scale for term in terms]

    def scaled(values: tuple[float, float, float]) -> tuple[float, ...]:
        return tuple(v * f for v, f in zip(values, scale, strict=True))

    return cal.model_copy(
        update={
            "k": scaled(cal.k),
            "floor_nm": scaled(cal.floor_nm),
            "crowding_nm": scaled(cal.crowding_nm),
            "step_weight": scaled(cal.step_weight),
            "chi2_weight_nm": tuple(term.weight_nm for term in terms),
            "chi2_gate": tuple(term.gate for term in terms),
            "chi2_power": tuple(term.power for term in terms),
        }
    )


def _store(model_dir: Path, record: dict[str, Any], *, refined: bool = False) -> None:
    """Set ``"precision"`` in ``model.json`` (``refined``: its ``"refined"``; a new
    network record keeps the refined one), the rest of the file as it is (a spline path
    stays relative to the model directory)."""
    path = Path(model_dir) / MODEL_JSON
    doc = json.loads(path.read_text())
    old = doc.get("precision") or {}
    if refined:
        doc["precision"] = {**old, "refined": record}
    else:
        doc["precision"] = {**record, **({"refined": old["refined"]} if "refined" in old else {})}
    write_json(path, doc)
    log.info("precision calibration recorded in %s", path)


def format_calibration(record: dict[str, Any]) -> str:
    """Printed summary: the constants and the check figures per axis."""
    fit = record["fit_set"]
    lo, hi = fit["molecules_per_frame"]
    lines = [
        f"precision calibration of {record.get('positions', 'the network')} positions "
        f"({record['method']})",
        f"fitted on {fit['matched']} matched localizations ({record['frames_per_set']} "
        f"frames, {lo}-{hi} molecules/frame, drift on):",
    ]
    for a, name in enumerate(AXES):
        lines.append(
            f"  {name}: k = {record['k'][a]:.3f}, floor = {record['floor_nm'][a]:.2f} nm, "
            f"crowding = {record['crowding_nm'][a]:.2f} nm, "
            f"step weight = {record.get('step_weight', (0.0,) * 3)[a]:.3f}, "
            f"chi2 weight = {record.get('chi2_weight_nm', (0.0,) * 3)[a]:.1f} nm "
            f"(gate {_per_axis(record.get('chi2_gate', CHI2_GATE))[a]:.2f}, "
            f"power {_per_axis(record.get('chi2_power', 1.0))[a]:.1f})"
        )
    for key, fig in record["figures"].items():
        lines.append(
            f"check, {fig['molecules_per_frame']} molecules/frame, drift "
            f"{'on' if fig['drift'] else 'off'} ({key}):"
        )
        lines.append(
            f"  photons/true (isolated, median) {_f(fig.get('photon_ratio_median_isolated'))}, "
            f"background {_f(fig.get('background_median_isolated'))} "
            f"(true {_f(fig.get('background_true'))})"
        )
        for name in AXES:
            p = fig.get("precision", {}).get(name, {})
            if "fraction_within_1_sigma" in p:
                ratios = " ".join(f"{r:.2f}" for r in p["rms_error_over_rms_sigma_by_quintile"])
                clipped = " ".join(
                    f"{r:.2f}" for r in p["rms_error_over_rms_sigma_by_quintile_within_5_sigma"]
                )
                lines.append(
                    f"  {name}: |error| <= sigma for {p['fraction_within_1_sigma']:.3f}; "
                    f"rms error / rms sigma by quintile of sigma: {ratios} "
                    f"(without the {100 * p['fraction_beyond_5_sigma']:.2f} % beyond 5 sigma: "
                    f"{clipped})"
                )
        ok = record["meets_acceptance"][key]
        lines.append(
            "  acceptance (0.68 +- 0.05 within sigma, every quintile within 25 %): "
            + ("met" if ok else "NOT met")
        )
    return "\n".join(lines)


def _per_axis(v: float | list[float]) -> list[float]:
    """A record's per-axis value (one number in records from before)."""
    return [float(v)] * 3 if isinstance(v, int | float) else [float(x) for x in v]


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
