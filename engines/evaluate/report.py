"""The evaluation report: JSON document, printed table, and the summary kept in model.json."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines.evaluate.crlb import CRLBResult, VoxelCeiling
from engines.evaluate.depth import depth_lines
from engines.evaluate.metrics import MoleculeStats
from engines.evaluate.runner import SetResult
from engines.io import atomic
from engines.modeldir import read_info, write_info

REPORT_VERSION = 1


def np_float(x: float) -> float | None:
    """JSON-safe float: NaN and inf become None."""
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """Recursively replace NaN/inf by None so the JSON is strict."""
    if isinstance(obj, float):
        return np_float(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def threshold_rows(result: SetResult) -> list[dict[str, Any]]:
    """Per threshold: voxel confusion matrix and molecule statistics of one set."""
    return [
        {
            "threshold": tau,
            "voxel": result.voxel[tau].to_dict(),
            "molecule": MoleculeStats.from_matching(result.matching[tau]).to_dict(),
            **({"z_by_depth": result.depth[tau].to_dict()} if tau in result.depth else {}),
        }
        for tau in sorted(result.voxel)
    ]


def low_density_section(
    result: SetResult,
    crlb: CRLBResult,
    crlb_shot: CRLBResult | None,
    ceiling: VoxelCeiling | None = None,
) -> dict[str, Any]:
    rows = threshold_rows(result)
    tau0 = rows[0]["molecule"]
    section = {
        "frames": result.frames,
        "molecules_per_frame": result.molecules_per_frame,
        "drift": result.drift,
        "results": rows,
        "crlb": crlb.to_dict(),
        "rmse_over_crlb_lateral": tau0["rmse_lateral_nm"] / crlb.lateral_nm,
        "rmse_over_crlb_axial": tau0["rmse_axial_nm"] / crlb.axial_nm,
    }
    if crlb_shot is not None:
        section["crlb_shot_noise_on_signal"] = crlb_shot.to_dict()
    if ceiling is not None:
        section["voxel_jaccard_ceiling"] = ceiling.to_dict()
    return section


def sweep_section(points: list[tuple[int, float, SetResult]]) -> list[dict[str, Any]]:
    """``points``: (molecules per 64x64, density per um^3, result) per density."""
    return [
        {
            "molecules_per_64x64": per64,
            "molecules_per_frame": r.molecules_per_frame,
            "density_per_um3": dens,
            "frames": r.frames,
            "results": threshold_rows(r),
        }
        for per64, dens, r in points
    ]


def write_json(report: dict[str, Any], path: Path) -> Path:
    """Write strictly valid JSON atomically (:mod:`engines.io.atomic`)."""
    return atomic.write_json(path, _clean(report), allow_nan=False)


def record_metrics(model_dir: Path, report: dict[str, Any]) -> str:
    """Store the summary in ``model.json`` ``metrics``; returns the key used."""
    p = report["protocol"]
    key = f"evaluate_{p['size']}x{p['size']}"
    summary: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "frames": p["frames"],
        "molecules_per_frame": p["molecules_per_frame"],
        "seed": p["seed"],
        "backend": report["backend"],
    }
    for row in report["results"]:
        m = row["molecule"]
        summary[f"tau_{row['threshold']:g}"] = {
            "voxel_jaccard": row["voxel"]["jaccard"],
            "molecule_jaccard": m["jaccard"],
            "rmse_lateral_nm": m["rmse_lateral_nm"],
            "rmse_axial_nm": m["rmse_axial_nm"],
            "efficiency_lateral": m["efficiency_lateral"],
            "efficiency_axial": m["efficiency_axial"],
        }
    low = report.get("low_density")
    if low:
        m = low["results"][0]["molecule"]
        summary["low_density"] = {
            "rmse_lateral_nm": m["rmse_lateral_nm"],
            "rmse_axial_nm": m["rmse_axial_nm"],
            "crlb_lateral_nm": low["crlb"]["lateral_nm"],
            "crlb_axial_nm": low["crlb"]["axial_nm"],
        }
        if "voxel_jaccard_ceiling" in low:
            summary["voxel_jaccard_ceiling"] = low["voxel_jaccard_ceiling"]["voxel_jaccard"]
        ph = low.get("photometry")
        if ph:
            summary["low_density"]["photon_ratio_median_isolated"] = ph[
                "photon_ratio_median_isolated"
            ]
            summary["low_density"]["background_ratio_median_isolated"] = ph[
                "background_ratio_median_isolated"
            ]
    info = read_info(model_dir)
    info.metrics[key] = _clean(summary)
    write_info(info, model_dir)
    return key


def _f(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _confusion_lines(row: dict[str, Any], shape: str) -> list[str]:
    v = row["voxel"]
    return [
        f"Voxel confusion matrix (paper Table 4), tau = {row['threshold']:g}, {shape}:",
        f"  {'':20s}{'true positive':>16s}{'true negative':>16s}",
        f"  {'estimated positive':20s}{v['tp']:>16,d}{v['fp']:>16,d}",
        f"  {'estimated negative':20s}{v['fn']:>16,d}{v['tn']:>16,d}",
        f"  voxel Jaccard TP/(TP+FP+FN) = {_f(v['jaccard'], '.3f')}",
        "",
    ]


MOL_HEADER = (
    f"  {'tau':>4s} {'JI':>6s} {'TP':>7s} {'FP':>6s} {'FN':>6s} {'RMSE lat':>9s} "
    f"{'RMSE ax':>8s} {'bias x':>7s} {'bias y':>7s} {'bias z':>7s} "
    f"{'E_lat':>6s} {'E_ax':>6s}"
)


def _molecule_line(row: dict[str, Any]) -> str:
    m = row["molecule"]
    return (
        f"  {row['threshold']:>4g} {_f(m['jaccard'], '.3f'):>6s} {m['tp']:>7d} {m['fp']:>6d} "
        f"{m['fn']:>6d} {_f(m['rmse_lateral_nm']):>9s} {_f(m['rmse_axial_nm']):>8s} "
        f"{_f(m['bias_x_nm']):>7s} {_f(m['bias_y_nm']):>7s} {_f(m['bias_z_nm']):>7s} "
        f"{_f(m['efficiency_lateral']):>6s} {_f(m['efficiency_axial']):>6s}"
    )


def _low_density_lines(low: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if low:
        c = low["crlb"]
        lines += [
            "",
            f"Low density: {low['molecules_per_frame']} molecules/frame, no drift, "
            f"{low['frames']} frames",
            MOL_HEADER,
        ]
        lines += [_molecule_line(row) for row in low["results"]]
        lines += [
            f"  CRLB ({c['method']}; {c['samples']} random molecules): "
            f"lateral {_f(c['lateral_nm'], '.2f')} nm (x {_f(c['x_nm'], '.2f')}, "
            f"y {_f(c['y_nm'], '.2f')}), axial {_f(c['axial_nm'], '.2f')} nm",
            f"  RMSE / CRLB at tau {low['results'][0]['threshold']:g}: lateral "
            f"{_f(low['rmse_over_crlb_lateral'], '.2f')}x, axial "
            f"{_f(low['rmse_over_crlb_axial'], '.2f')}x",
        ]
        v = low.get("voxel_jaccard_ceiling")
        if v:
            lines.append(
                f"  voxel Jaccard ceiling at the CRLB (every molecule found, "
                f"unbiased): {_f(v['voxel_jaccard'], '.3f')} (estimate stays in its "
                f"voxel with p = {_f(v['p_same_voxel'], '.3f')})"
            )
        s = low.get("crlb_shot_noise_on_signal")
        if s:
            lines.append(
                f"  (bound if the Poisson term were shot noise on the signal, "
                f"{s['method']}: lateral {_f(s['lateral_nm'], '.2f')} nm, axial "
                f"{_f(s['axial_nm'], '.2f')} nm)"
            )
    return lines


def _sweep_lines(sweep: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    if sweep:
        lines += [
            "",
            f"Density sweep ({sweep[0]['frames']} frames per density, drift on):",
            f"  {'mol/64x64':>9s} {'mol/frame':>9s} {'per um^3':>9s} {'tau':>4s} "
            f"{'voxel JI':>8s} {'mol JI':>7s} {'RMSE lat':>9s} {'RMSE ax':>8s}",
        ]
        for pt in sweep:
            for row in pt["results"]:
                m = row["molecule"]
                lines.append(
                    f"  {pt['molecules_per_64x64']:>9d} {pt['molecules_per_frame']:>9d} "
                    f"{pt['density_per_um3']:>9.3f} {row['threshold']:>4g} "
                    f"{_f(row['voxel']['jaccard'], '.3f'):>8s} {_f(m['jaccard'], '.3f'):>7s} "
                    f"{_f(m['rmse_lateral_nm']):>9s} {_f(m['rmse_axial_nm']):>8s}"
                )
    return lines


def _photometry_lines(name: str, ph: dict[str, Any] | None) -> list[str]:
    """Photons, background and precision coverage of one set (issue 15)."""
    if not ph:
        return []
    lines = [
        "",
        f"Photometry, {name} ({ph['matched']} matched, {ph['isolated']} isolated: no other "
        f"molecule within {ph['isolation_px']} px):",
        f"  photons / true photons, isolated: median "
        f"{_f(ph['photon_ratio_median_isolated'], '.3f')} (16-84 %: "
        + " - ".join(_f(v, ".3f") for v in ph["photon_ratio_p16_p84_isolated"] or [None])
        + f"); all matched {_f(ph['photon_ratio_median_all'], '.3f')}",
        f"  background, isolated: median {_f(ph['background_median_isolated'], '.2f')} "
        f"(true {_f(ph['background_true'], '.2f')}); all matched "
        f"{_f(ph['background_median_all'], '.2f')}",
    ]
    r = ph.get("rms_error_over_rms_crlb")
    if r:
        lines.append(
            "  rms error / rms CRLB at the estimate: "
            + ", ".join(f"{a} {_f(v, '.2f')}" for a, v in r.items())
        )
    for axis, p in (ph.get("precision") or {}).items():
        if "fraction_within_1_sigma" in p:
            ratios = " ".join(_f(v, ".2f") for v in p["rms_error_over_rms_sigma_by_quintile"])
            lines.append(
                f"  precision {axis}: |error| <= sigma for "
                f"{_f(p['fraction_within_1_sigma'], '.3f')}; rms error / rms sigma by "
                f"quintile of sigma: {ratios}"
            )
    return lines


def format_table(report: dict[str, Any]) -> str:
    """Human-readable summary of a report (distances in nm, efficiencies in %)."""
    p, mdl = report["protocol"], report["model"]
    shape = f"{p['size']}x{p['size']}x{p['planes']} x {p['frames']} frames"
    lines = [
        f"model {mdl['name']} v{mdl['version']} ({mdl['dir']}), backend {report['backend']}",
        f"protocol: {shape}, {p['molecules_per_frame']} molecules/frame, drift on, "
        f"seed {p['seed']}; matching greedy nearest-first within {p['lateral_tol_nm']:g} nm "
        f"lateral / {p['axial_tol_nm']:g} nm axial",
        "",
    ]
    for row in report["results"]:
        lines += _confusion_lines(row, shape)
    lines += ["Molecules (distances nm, E in %):", MOL_HEADER]
    lines += [_molecule_line(row) for row in report["results"]]
    first = report["results"][0] if report["results"] else {}
    if "z_by_depth" in first:
        lines += [f"tau {first['threshold']:g}:", *depth_lines(first["z_by_depth"])]
    lines += _photometry_lines("main set", report.get("photometry"))
    low = report.get("low_density") or {}
    lines += _low_density_lines(report.get("low_density"))
    lines += _photometry_lines("low density", low.get("photometry"))
    lines += _sweep_lines(report.get("density_sweep") or [])
    if report.get("plots"):
        lines += ["", "plots: " + ", ".join(report["plots"].values())]
    return "\n".join(lines)
