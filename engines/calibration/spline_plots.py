"""Figures of a spline PSF calibration: bead images measured vs model, widths vs z."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.calibration.spline_fit import SplineFit
from engines.calibration.spots import SIGMA, fit_gaussians
from engines.spline_psf import scatter_windows


def _model_rois(fit: SplineFit, plane: int) -> np.ndarray:
    """``(B, Z, S, S)`` the spline rendered at every bead's centre and brightness."""
    sp, beads = fit.spline, fit.beads[plane]
    px = sp.px_nm
    n_b, n_z = beads.rois.shape[:2]
    z = sp.z0_nm + np.arange(n_z) * sp.z_step_nm
    x = torch.tensor(np.repeat(beads.xy_px[:, 0] * px, n_z), dtype=torch.float64)
    y = torch.tensor(np.repeat(beads.xy_px[:, 1] * px, n_z), dtype=torch.float64)
    zz = torch.tensor(np.tile(z, n_b), dtype=torch.float64)
    win, r0, c0 = sp.windows(plane, x, y, zz, exact=True)
    side = beads.rois.shape[-1]
    idx = torch.arange(len(x))
    img = scatter_windows(win, r0, c0, idx, frames=len(x), height=side, width=side)
    model = img.numpy().reshape(beads.rois.shape)
    return model * _scale(beads.rois, model)


def _scale(data: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Per-bead least-squares brightness ``(B, 1, 1, 1)``."""
    num = (data * model).sum(axis=(1, 2, 3))
    den = (model * model).sum(axis=(1, 2, 3))
    return (num / den)[:, None, None, None]


def _widths_nm(rois: np.ndarray, px_nm: float) -> np.ndarray:
    """``(Z,)`` median Gaussian width over beads of ``(B, Z, S, S)`` windows, nm."""
    n_b, n_z, s, _ = rois.shape
    params, ok, _ = fit_gaussians(rois.reshape(-1, s, s))
    w = np.where(ok, params[:, SIGMA] * px_nm, np.nan).reshape(n_b, n_z)
    return np.nanmedian(w, axis=0)


def plot_spline_fit(
    fit: SplineFit, images_path: Path, widths_path: Path, n_z: int = 5
) -> list[Path]:
    """Write the two figures; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = fit.spline
    planes = sp.planes
    models = [_model_rois(fit, k) for k in range(planes)]
    z_all = sp.z0_nm + np.arange(fit.beads[0].rois.shape[1]) * sp.z_step_nm
    picks = np.linspace(0, len(z_all) - 1, n_z + 2)[1:-1].round().astype(int)
    fig, axes = plt.subplots(2 * planes, n_z, figsize=(1.6 * n_z, 1.6 * 2 * planes), dpi=110)
    for k in range(planes):
        beads = fit.beads[k]
        b = int(np.argmax(beads.brightness))
        for j, i in enumerate(picks):
            top = max(beads.rois[b, i].max(), models[k][b, i].max())
            for row, (img, what) in enumerate(
                ((beads.rois[b, i], "bead"), (models[k][b, i], "spline"))
            ):
                ax = axes[2 * k + row, j]
                ax.imshow(img, vmin=0, vmax=top, cmap="magma")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"plane {k}\n{what}", fontsize=7)
                if k == 0 and row == 0:
                    ax.set_title(f"z {z_all[i]:.0f} nm", fontsize=7)
    fig.suptitle("measured bead vs spline model (same centre and brightness)", fontsize=8)
    fig.tight_layout()
    images_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(images_path)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for k in range(planes):
        c = f"C{k}"
        ax.plot(
            z_all,
            _widths_nm(fit.beads[k].rois, sp.px_nm),
            "o",
            mfc="none",
            ms=3,
            color=c,
            label=f"plane {k} beads",
        )
        ax.plot(z_all, _widths_nm(models[k], sp.px_nm), "-", color=c, lw=1.2)
        ax.axvline(sp.focal_nm[k], color=c, lw=0.6, ls=":")
    ax.set_xlabel("bead z [nm] (sample coordinates)")
    ax.set_ylabel("Gaussian-fit width [nm]")
    ax.set_title("bead widths (o) vs the spline model (-); dotted: plane foci", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(widths_path)
    plt.close(fig)
    return [images_path, widths_path]
