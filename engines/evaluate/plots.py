"""Figures of the evaluation report (paper Figs. 7 and 8), written as PNG with Agg.

Only :class:`matplotlib.figure.Figure` is used (no pyplot state), so plotting works
headless and from any thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from engines.evaluate.runner import SetResult
from engines.io.atomic import atomic_output

AXES = ("x", "y", "z")
COLOURS = {"x": "tab:blue", "y": "tab:orange", "z": "tab:green"}


def _save(fig: Figure, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    return path


def plot_jaccard_vs_density(
    points: list[tuple[float, SetResult]], thresholds: tuple[float, ...], path: Path
) -> Path:
    """Fig. 7: (a) voxel and molecule Jaccard, (b) mean +- std error per axis, vs density.

    Args:
        points: ``(density per um^3, result)`` per density.
    """
    dens = np.array([d for d, _ in points])
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_j, ax_e = fig.subplots(1, 2)
    for tau in thresholds:
        ax_j.plot(
            dens, [r.voxel[tau].jaccard for _, r in points], "o-", label=f"voxel, tau={tau:g}"
        )
        ax_j.plot(
            dens,
            [r.matching[tau].jaccard for _, r in points],
            "s--",
            label=f"molecule, tau={tau:g}",
        )
    ax_j.set(
        xlabel="density [molecules / um^3]",
        ylabel="Jaccard index",
        title="(a) Jaccard index vs density",
        ylim=(0, 1.02),
    )
    ax_j.grid(alpha=0.3)
    ax_j.legend(fontsize=8)
    tau = thresholds[0]
    for a, name in enumerate(AXES):
        stats = [_mean_std(r.matching[tau].delta_nm[:, a]) for _, r in points]
        ax_e.errorbar(
            dens * (1 + 0.02 * (a - 1)),
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            fmt="o-",
            capsize=3,
            color=COLOURS[name],
            label=f"error {name}",
        )
    ax_e.axhline(0, color="grey", lw=0.8)
    ax_e.set(
        xlabel="density [molecules / um^3]",
        ylabel="error [nm] (mean +- std)",
        title=f"(b) error of matched localizations, tau={tau:g}",
    )
    ax_e.grid(alpha=0.3)
    ax_e.legend(fontsize=8)
    return _save(fig, path)


def plot_error_histograms(
    low: tuple[float, SetResult],
    high: tuple[float, SetResult],
    thresholds: tuple[float, ...],
    path: Path,
) -> Path:
    """Fig. 8: histograms of dx, dy, dz at the lowest and highest density, per threshold."""
    taus = sorted({thresholds[0], thresholds[-1]})
    fig = Figure(figsize=(5 * len(taus), 7.5), layout="constrained")
    axes = fig.subplots(2, len(taus), squeeze=False)
    bins = np.linspace(-300, 300, 121)  # errors beyond +-300 nm land in the end bins
    for row, (density, result) in enumerate((low, high)):
        for col, tau in enumerate(taus):
            ax = axes[row][col]
            delta = result.matching[tau].delta_nm
            for a, name in enumerate(AXES):
                ax.hist(
                    np.clip(delta[:, a], bins[0], bins[-1]),
                    bins=bins,
                    histtype="step",
                    color=COLOURS[name],
                    label=f"{name}: sd {_mean_std(delta[:, a])[1]:.1f} nm",
                )
            ax.set(
                title=f"tau = {tau:g}, density = {density:.3g} /um^3 "
                f"({result.molecules_per_frame} per frame)",
                xlabel="estimated - true [nm] (clipped at +-300)",
                ylabel="matched localizations",
            )
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    return _save(fig, path)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))
