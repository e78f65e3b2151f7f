"""voxloc's tables in the real tools: Picasso (picassosr) and locan, on a blinking, drifting
``voxloc simulate`` stack localized by ``voxloc localize`` (default model, CPU).

Every step runs even when an earlier one failed; the table shows what each tool did and
the figures checked against the ground truth (issue 15 acceptance):

* NeNA (Picasso ``postprocess.nena``) vs the rms lateral error per axis from the ground
  truth: agree within 25 %;
* RCC (Picasso ``postprocess.undrift``) vs the simulated linear stage drift: the recovered
  drift from the first to the last frame within 20 nm of the truth, per axis.

    python benchmarks/interop.py                 # 1000 frames of 48x48x4, ~3 min on CPU
    python benchmarks/interop.py --json benchmarks/results/interop.json

Needs ``pip install picassosr==0.11.3 locan==0.22.0`` (docs/interop.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# run as a script, this folder comes first on sys.path and benchmarks/engines.py would
# shadow the `engines` package
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np  # noqa: E402

from clients.cli import main as voxloc  # noqa: E402
from engines.evaluate.matching import match_localizations  # noqa: E402
from engines.io import read_table  # noqa: E402


@dataclass
class Step:
    name: str
    ok: bool = False
    figure: str = ""
    seconds: float = 0.0
    error: str = ""
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """The files of one run and what the steps found out."""

    dir: Path
    px_nm: float
    drift_nm: tuple[float, float]
    model: str = "default"
    refine: bool = False  # voxloc localize --refine
    plane_drift: bool = True  # the model's per-plane drift in the stack (simulate --no-drift)
    weight: tuple[float, float] | None = None  # simulate --weight (None: the model's range)
    off_frames: int = 100  # simulate --off-frames: the emitters' mean dark time
    steps: list[Step] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str, fn: Callable[[Run], tuple[str, dict[str, Any]]]) -> Step:
        s = Step(name)
        t0 = time.perf_counter()
        try:
            quiet = io.StringIO()  # the tools' progress bars and prints
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                s.figure, s.values = fn(self)
            s.ok = True
        except Exception as exc:  # a failing tool is a result here, not a crash
            s.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            s.values["traceback"] = traceback.format_exc(limit=3)
        s.seconds = time.perf_counter() - t0
        self.steps.append(s)
        return s


# ---- voxloc ---------------------------------------------------------------------------


def simulate(
    run: Run,
    frames: int,
    size: int,
    molecules: int,
    seed: int,
    structure: str = "rings",
    z_nm: tuple[float, float] = (600.0, 800.0),
) -> None:
    args = ["simulate", "-o", run.dir / "stack.tif", "--frames", frames, "--size", size]
    args += ["--molecules", molecules, "--seed", seed, "--blinking", "--on-frames", 4]
    args += ["--off-frames", run.off_frames, "--drift-nm", *run.drift_nm, "--structure", structure]
    args += ["--z-nm", *z_nm, "-q"] + ([] if run.plane_drift else ["--no-drift"])
    args += ["--weight", *run.weight] if run.weight else []
    if voxloc([str(a) for a in args]) != 0:
        raise RuntimeError("voxloc simulate failed")


def localize(run: Run) -> tuple[str, dict[str, Any]]:
    for suffix in (".h5", ".csv"):
        out = run.dir / f"locs{suffix}"
        cmd = ["localize", str(run.dir / "stack.tif"), "-o", str(out), "--model", run.model]
        if voxloc([*cmd, *(["--refine"] if run.refine else []), "-q"]) != 0:
            raise RuntimeError(f"voxloc localize -o {out.name} failed")
    table = read_table(run.dir / "locs.csv")
    return f"{len(table)} localizations", {"localizations": len(table)}


def matched_errors(run: Run, chi2_max: float = np.inf) -> np.ndarray:
    """``(M, 5)`` rows (emitter, frame, x error, y error, lateral distance to the nearest
    other molecule on in the frame, nm) of the localizations in ``locs.csv`` (those whose
    fit ``chi2`` is at most ``chi2_max``) matched to the ground truth, sorted by emitter
    then frame."""
    pred, truth = read_table(run.dir / "locs.csv"), read_table(run.dir / "stack_truth.csv")
    fits = pred.extra["chi2"] <= chi2_max if np.isfinite(chi2_max) else np.ones(len(pred), bool)
    rows = []
    for f in np.unique(truth.frame):
        on = truth.in_frame(f)
        m = match_localizations(pred.xyz_nm[(pred.frame == f) & fits], on)
        emitter = truth.extra["emitter"][truth.frame == f][m.true_idx]
        apart = np.linalg.norm(on[:, None, :2] - on[None, :, :2], axis=-1)
        np.fill_diagonal(apart, np.inf)
        near = apart.min(axis=1)[m.true_idx] if len(on) > 1 else np.full(m.tp, np.inf)
        rows.append(np.column_stack([emitter, np.full(m.tp, f), m.delta_nm[:, :2], near]))
    r = np.concatenate(rows)
    return r[np.lexsort((r[:, 1], r[:, 0]))]


# a molecule with no other on within this lateral distance in its frame is "lone": its
# error is independent from frame to frame (docs/interop.md); nearer ones blend
LONE_NM = 400.0


def truth_errors(run: Run) -> tuple[str, dict[str, Any]]:
    """The lateral error per axis of the matched localizations against the ground truth:
    its rms (the acceptance's reference), a robust sigma (MAD), and the part NeNA can see,
    the error's change between consecutive frames of one emitter (rms of the difference
    over sqrt 2) with the correlation of consecutive errors (bias that a localizer repeats
    frame after frame is invisible to NeNA)."""
    r = matched_errors(run)
    d = r[:, 2:4]
    lone = r[:, 4] > LONE_NM
    nxt = (r[1:, 0] == r[:-1, 0]) & (r[1:, 1] == r[:-1, 1] + 1)
    a, b = d[:-1][nxt], d[1:][nxt]
    rms = float(np.sqrt((d**2).mean()))
    values = {
        "matched": len(d),
        "rms_per_axis_nm": rms,
        "mad_sigma_per_axis_nm": float(np.median(np.abs(d)) / 0.6745),
        "consecutive_pairs": int(nxt.sum()),
        "frame_to_frame_sigma_nm": float(np.sqrt(((a - b) ** 2).mean() / 2)),
        "frame_to_frame_mad_sigma_nm": float(np.median(np.abs(a - b)) / np.sqrt(2) / 0.6745),
        "lone_fraction": float(lone.mean()),
        "lone_rms_per_axis_nm": float(np.sqrt((d[lone] ** 2).mean())),
        "consecutive_error_correlation": float(
            np.mean([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(2)])
        ),
    }
    run.shared["rms_nm"] = rms
    run.shared["truth"] = values
    return (
        f"rms {rms:.1f} nm per axis (MAD sigma {values['mad_sigma_per_axis_nm']:.1f}); "
        f"frame to frame {values['frame_to_frame_sigma_nm']:.1f} nm (MAD "
        f"{values['frame_to_frame_mad_sigma_nm']:.1f}), consecutive errors correlate "
        f"{values['consecutive_error_correlation']:.2f}; {len(d)} matched; "
        f"{100 * values['lone_fraction']:.0f} % lone (nothing on within {LONE_NM:.0f} nm), "
        f"their rms {values['lone_rms_per_axis_nm']:.1f} nm",
        values,
    )


# ---- Picasso ---------------------------------------------------------------------------


def picasso_load(run: Run) -> tuple[str, dict[str, Any]]:
    from picasso import io as pio

    locs, info = pio.load_locs(str(run.dir / "locs.h5"))
    run.shared["locs"], run.shared["info"] = locs, info
    cols = ",".join(locs.columns)
    written = len(read_table(run.dir / "locs.h5"))
    if len(locs) < written:  # Picasso drops rows it finds insane (NaN or <= 0 lpx, ...)
        raise ValueError(f"Picasso kept {len(locs)} of {written} rows; columns {cols}")
    return f"{len(locs)} locs; columns {cols}", {"columns": list(locs.columns)}


def picasso_render(run: Run) -> tuple[str, dict[str, Any]]:
    from picasso import render

    locs, info = run.shared["locs"], run.shared["info"]
    n, image = render.render(locs, info, disp_px_size=run.px_nm / 10, blur_method="gaussian")
    if not np.isfinite(image).all() or image.sum() <= 0:
        raise ValueError(f"rendered image is empty or not finite (sum {image.sum()})")
    return f"{n} locs into {image.shape[1]}x{image.shape[0]} px", {"shape": list(image.shape)}


def picasso_nena(run: Run) -> tuple[str, dict[str, Any]]:
    from picasso import postprocess

    _, s_px = postprocess.nena(run.shared["locs"].copy(), run.shared["info"])
    nena_nm = float(s_px) * run.px_nm
    rms = run.shared.get("rms_nm", float("nan"))
    ratio = nena_nm / rms
    f2f = run.shared["truth"]["frame_to_frame_sigma_nm"]
    values = {
        "nena_nm": nena_nm,
        "rms_nm": rms,
        "ratio": ratio,
        "pass": bool(abs(ratio - 1) <= 0.25),
        "frame_to_frame_sigma_nm": f2f,
        "ratio_to_frame_to_frame": nena_nm / f2f,
        "ratio_to_lone_rms": nena_nm / run.shared["truth"]["lone_rms_per_axis_nm"],
    }
    return (
        f"NeNA {nena_nm:.1f} nm vs rms {rms:.1f} nm: ratio {ratio:.2f} (accept 0.75-1.25); "
        f"vs frame-to-frame {f2f:.1f} nm: {nena_nm / f2f:.2f}; vs the lone molecules' "
        f"rms: {values['ratio_to_lone_rms']:.2f}",
        values,
    )


LINK_R_MAX_PX = 0.3  # 58 nm: 3.5x the localizations' frame-to-frame spread, < ring chord x 2


CHI2_MAX = 1.5  # the filter of picasso_nena_fits: the fit within 1.5x the noise per pixel


def picasso_nena_fits(run: Run) -> tuple[str, dict[str, Any]]:
    """NeNA and the rms error of the localizations whose window fit describes them
    (``chi2`` at most ``CHI2_MAX``): two molecules blended into one localization stay
    blended from frame to frame, so NeNA cannot see their error; the fit's chi2 can."""
    from picasso import postprocess

    locs = run.shared["locs"]
    kept = locs[locs["chi2"] <= CHI2_MAX].copy()
    _, s_px = postprocess.nena(kept, run.shared["info"])
    nena_nm = float(s_px) * run.px_nm
    rms = float(np.sqrt((matched_errors(run, CHI2_MAX)[:, 2:4] ** 2).mean()))
    values = {"kept": len(kept), "of": len(locs), "nena_nm": nena_nm, "rms_nm": rms}
    values |= {"ratio": nena_nm / rms, "pass": bool(abs(nena_nm / rms - 1) <= 0.25)}
    return (
        f"{len(kept)} of {len(locs)} locs with chi2 <= {CHI2_MAX}: NeNA {nena_nm:.1f} nm vs "
        f"rms {rms:.1f} nm, ratio {nena_nm / rms:.2f} (accept 0.75-1.25)",
        values,
    )


def ideal_nena(run: Run) -> tuple[str, dict[str, Any]]:
    """The control: Picasso's NeNA for an ideal localizer on the same stack, the ground
    truth plus Gaussian noise of each molecule's own Cramer-Rao bound (lateral, the
    model's settings). Where even it misses 0.75-1.25, the stack's spread of precisions
    (brightness, z) is outside what NeNA's one-precision fit assumes."""
    import pandas as pd
    import torch
    from picasso import postprocess

    from engines.evaluate.crlb import fisher_information, window_px
    from engines.modeldir import load_model

    settings = load_model(run.model)[1].settings
    truth = read_table(run.dir / "stack_truth.csv")
    xyz = truth.xyz_nm.astype(np.float64)
    px, centre = settings.geometry.px_nm, window_px(settings) // 2
    sub = centre * px + np.mod(xyz[:, :2], px)  # the molecule's sub-pixel place in a window
    theta = torch.from_numpy(np.column_stack([sub, xyz[:, 2], truth.extra["weight"]]))
    var = torch.cat(
        [
            torch.diagonal(torch.linalg.inv(fisher_information(t, settings)), dim1=-2, dim2=-1)
            for t in theta.split(2000)
        ]
    )
    sigma = var[:, :2].sqrt().numpy()
    est = xyz[:, :2] + np.random.default_rng(0).normal(size=sigma.shape) * sigma
    rms = float(np.sqrt(((est - xyz[:, :2]) ** 2).mean()))
    locs = pd.DataFrame(
        {"frame": truth.frame.astype(np.uint32), "x": est[:, 0] / px, "y": est[:, 1] / px}
        | {"lpx": sigma[:, 0] / px, "lpy": sigma[:, 1] / px}
    )
    _, s_px = postprocess.nena(locs, run.shared["info"])
    nena_nm = float(s_px) * px
    values = {
        "crlb_x_nm_p10_p50_p90": np.percentile(sigma[:, 0], [10, 50, 90]).round(2).tolist(),
        "rms_nm": rms,
        "nena_nm": nena_nm,
        "ratio": nena_nm / rms,
    }
    return (
        f"CRLB x {values['crlb_x_nm_p10_p50_p90']} nm (p10/50/90): NeNA {nena_nm:.2f} nm vs "
        f"rms {rms:.2f} nm, ratio {nena_nm / rms:.2f}",
        values,
    )


def picasso_link(run: Run) -> tuple[str, dict[str, Any]]:
    """Picasso's ``link`` against the ground truth's bursts: an event reproduces a burst
    when it starts in the burst's first frame, within 50 nm of its mean position, and
    lasts as long (frames, dark gaps of 1 bridged on both sides)."""
    from picasso import postprocess
    from scipy.spatial import cKDTree

    locs = run.shared["locs"]
    linked = postprocess.link(locs, run.shared["info"], r_max=LINK_R_MAX_PX, max_dark_time=1)
    bursts = _true_bursts(run, max_dark=1)  # (B, 4): start, length, x, y (nm)
    events = np.column_stack([linked["frame"], linked["len"], linked["x"], linked["y"]])
    events[:, 2:] *= run.px_nm
    exact = 0
    for f0 in np.unique(events[:, 0]):
        b, e = bursts[bursts[:, 0] == f0], events[events[:, 0] == f0]
        if len(b):
            dist, j = cKDTree(b[:, 2:]).query(e[:, 2:])
            exact += int(((dist < 50) & (b[j, 1] == e[:, 1])).sum())
    values = {
        "r_max_px": LINK_R_MAX_PX,
        "events": len(linked),
        "true_bursts": len(bursts),
        "events_reproducing_a_burst": exact,
        "mean_len": float(linked["len"].mean()),
        "true_mean_len": float(bursts[:, 1].mean()),
    }
    return (
        f"{len(locs)} locs -> {len(linked)} events (truth: {len(bursts)} bursts); "
        f"{exact} ({exact / max(len(linked), 1):.2f}) reproduce a true burst exactly; mean "
        f"length {values['mean_len']:.2f} frames (truth {values['true_mean_len']:.2f})",
        values,
    )


def _true_bursts(run: Run, max_dark: int) -> np.ndarray:
    """``(B, 4)`` on-bursts of the ground-truth emitters inside the frame (dark gaps <=
    ``max_dark`` bridged as Picasso's link does): first frame, length, mean x, y (nm)."""
    truth = read_table(run.dir / "stack_truth.csv")
    rows = []
    for e in np.unique(truth.extra["emitter"]):
        sel = truth.extra["emitter"] == e
        order = np.argsort(truth.frame[sel])
        f, xy = truth.frame[sel][order], truth.xyz_nm[sel][order, :2]
        breaks = np.flatnonzero(np.diff(f) > max_dark + 1)
        for a, b in zip(np.r_[0, breaks + 1], np.r_[breaks, len(f) - 1], strict=True):
            rows.append([f[a], f[b] - f[a] + 1, *xy[a : b + 1].mean(axis=0)])
    return np.array(rows, float).reshape(-1, 4)


def picasso_undrift(run: Run) -> tuple[str, dict[str, Any]]:
    from picasso import postprocess

    locs, info = run.shared["locs"], run.shared["info"]
    frames = int(info[0]["Frames"])
    segmentation = max(frames // 10, 50)
    drift, _ = postprocess.undrift(locs, info, segmentation, display=False)
    est = drift[["x", "y"]].to_numpy() * run.px_nm  # (frames, 2) nm
    true = np.loadtxt(run.dir / "stack_drift.csv", delimiter=",", skiprows=1)[:, 1:3]
    t = np.arange(frames)
    slope = np.polyfit(t, est, 1)[0]  # nm per frame, x and y
    total = slope * (frames - 1)
    resid = (est - est.mean(0)) - (true - true.mean(0))
    err_total = total - np.array(run.drift_nm)
    values = {
        "segmentation": segmentation,
        "recovered_total_nm": total.tolist(),
        "true_total_nm": list(run.drift_nm),
        "error_total_nm": err_total.tolist(),
        "rms_trajectory_error_nm": float(np.sqrt((resid**2).mean())),
        "max_trajectory_error_nm": float(np.abs(resid).max()),
        "pass": bool(np.abs(err_total).max() <= 20),
    }
    return (
        f"recovered ({total[0]:.1f}, {total[1]:.1f}) nm of ({run.drift_nm[0]:g}, "
        f"{run.drift_nm[1]:g}); trajectory rms error {values['rms_trajectory_error_nm']:.1f} nm "
        f"(accept: total within 20 nm)",
        values,
    )


def picasso_frc(run: Run) -> tuple[str, dict[str, Any]]:
    from picasso import postprocess

    info = run.shared["info"]
    h, w = int(info[0]["Height"]), int(info[0]["Width"])
    res = postprocess.frc(run.shared["locs"].copy(), info, ((0.0, 0.0), (float(h), float(w))))
    return f"FRC resolution {float(res['resolution']):.1f} nm", {
        "resolution_nm": float(res["resolution"])
    }


def picasso_import_ts(run: Run) -> tuple[str, dict[str, Any]]:
    from picasso import io as pio

    locs, _ = pio.import_ts(str(run.dir / "locs.csv"), run.px_nm)
    return f"{len(locs)} locs; columns {','.join(locs.columns)}", {"columns": list(locs.columns)}


# ---- locan -----------------------------------------------------------------------------


def locan_read(run: Run) -> tuple[str, dict[str, Any]]:
    import locan

    data = locan.load_thunderstorm_file(run.dir / "locs.csv")
    run.shared["locdata"] = data
    cols = list(data.data.columns)
    return f"{len(data)} locs; properties {','.join(cols)}", {"properties": cols}


def locan_uncertainty(run: Run) -> tuple[str, dict[str, Any]]:
    import locan

    data = run.shared["locdata"]
    cols = set(data.data.columns)
    sigma = any(c.startswith("psf_sigma") for c in cols)
    model = 3 if sigma and "local_background" in cols else (2 if sigma else 1)
    if "intensity" not in cols:
        raise KeyError("intensity (locan LocalizationUncertainty needs photons)")
    kwargs = {"pixel_size": run.px_nm} if model == 3 else {}
    res = locan.LocalizationUncertainty(model=model, **kwargs).compute(data).results
    if res is None or res.empty or not np.isfinite(res.to_numpy()).any():
        raise ValueError("LocalizationUncertainty gave no finite result")
    med = res.median().to_dict()
    txt = ", ".join(f"{k} {v:.1f}" for k, v in med.items())
    return f"model {model}: median {txt}", {"model": model, "median": med}


def locan_precision(run: Run) -> tuple[str, dict[str, Any]]:
    import locan

    data = run.shared["locdata"]
    # locan searches frame by frame in Python (~10 frames/s): the first 300 frames
    first = locan.LocData.from_selection(data, indices=data.data.index[data.data.frame < 300])
    lp = locan.LocalizationPrecision(radius=100).compute(first)
    if lp.results is None or lp.results.empty:
        raise ValueError("no successive localizations found")
    lp.fit_distributions()
    stats = lp.distribution_statistics
    sigma = {a: float(getattr(stats, f"position_delta_{a}_scale")) for a in "xy"}
    # the difference of two positions has sqrt(2) x the precision
    prec = {a: s / np.sqrt(2) for a, s in sigma.items()}
    return (
        f"{len(lp.results)} pairs; precision x {prec['x']:.1f}, y {prec['y']:.1f} nm",
        {"pairs": len(lp.results), "precision_nm": prec},
    )


def locan_smlm(run: Run) -> tuple[str, dict[str, Any]]:
    import locan

    out = run.dir / "locs.smlm"
    cmd = ["localize", str(run.dir / "stack.tif"), "-o", str(out), "--model", run.model]
    if voxloc([*cmd, *(["--refine"] if run.refine else []), "-q"]) != 0:
        raise RuntimeError(f"voxloc localize -o {out.name} failed (no .smlm writer?)")
    data = locan.load_SMLM_file(out)
    cols = list(data.data.columns)
    return f"{len(data)} locs; properties {','.join(cols)}", {"properties": cols}


STEPS: list[tuple[str, Callable[[Run], tuple[str, dict[str, Any]]]]] = [
    ("voxloc localize (.h5, .csv)", localize),
    ("ground truth: rms error", truth_errors),
    ("picasso io.load_locs", picasso_load),
    ("picasso render gaussian", picasso_render),
    ("picasso postprocess.nena", picasso_nena),
    ("picasso nena, fit chi2 <= 1.5", picasso_nena_fits),
    ("picasso nena of an ideal localizer", ideal_nena),
    ("picasso postprocess.link", picasso_link),
    ("picasso postprocess.undrift (RCC)", picasso_undrift),
    ("picasso postprocess.frc", picasso_frc),
    ("picasso io.import_ts (CSV)", picasso_import_ts),
    ("locan load_thunderstorm_file", locan_read),
    ("locan LocalizationUncertainty", locan_uncertainty),
    ("locan LocalizationPrecision", locan_precision),
    ("locan load_SMLM_file (.smlm)", locan_smlm),
]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("picassosr", "locan", "numpy", "pandas", "numba", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--size", type=int, default=48, help="frame height and width, px")
    p.add_argument("--molecules", type=int, default=16, help="mean molecules on per frame")
    p.add_argument("--structure", choices=["uniform", "rings"], default="rings")
    p.add_argument("--z-nm", type=float, nargs=2, default=(600.0, 800.0), help="sample z range")
    p.add_argument("--drift-nm", type=float, nargs=2, default=(100.0, -60.0))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--off-frames", type=int, default=100, help="simulate --off-frames (mean dark time)"
    )
    p.add_argument("--weight", type=float, nargs=2, default=None, help="simulate --weight LO HI")
    p.add_argument("--model", default="default", help="voxloc model name or directory")
    p.add_argument("--keep", type=Path, default=None, help="keep the files in this folder")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--refine", action="store_true", help="voxloc localize --refine")
    p.add_argument(
        "--no-plane-drift", action="store_true", help="stack without the per-plane drift"
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="WORD",
        help="leave out the steps whose name contains WORD (e.g. frc: slow when NeNA is small)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        run = Run(
            d,
            192.0,
            tuple(args.drift_nm),
            str(args.model),
            refine=args.refine,
            plane_drift=not args.no_plane_drift,
            weight=tuple(args.weight) if args.weight else None,
            off_frames=args.off_frames,
        )
        t0 = time.perf_counter()
        simulate(run, args.frames, args.size, args.molecules, args.seed, args.structure, args.z_nm)
        t_sim = time.perf_counter() - t0
        for name, fn in STEPS:
            if not any(word in name for word in args.skip):
                run.step(name, fn)
    print(
        f"stack: {args.frames} frames of {args.size}x{args.size}x4, {args.molecules} molecules "
        f"on per frame, {args.structure}, z {args.z_nm} nm, drift {args.drift_nm} nm, "
        f"per-plane drift {'off' if args.no_plane_drift else 'on'}, brightness "
        f"{args.weight or 'the model range'}"
        f"{', localize --refine' if args.refine else ''} (simulated in {t_sim:.1f} s)"
    )
    print(f"{'step':36s} {'ok':4s} {'s':>6s}  result")
    for s in run.steps:
        print(f"{s.name:36s} {'yes' if s.ok else 'NO':4s} {s.seconds:6.1f}  {s.figure or s.error}")
    if args.json:
        report = {
            "versions": versions(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "steps": [s.__dict__ for s in run.steps],
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if all(s.ok for s in run.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
