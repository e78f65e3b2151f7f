"""PSF calibration from bead z-stacks (paper Sec. 2.2, Fig. 2).

Every plane records the same beads while the stage steps them through focus. Each bead
image is fitted with a 2D Gaussian; the median width per slice and plane is then fitted
with one defocus curve r(x) (Eq. 5: r0, D, A, B) shared by all planes and one focal
position per plane. The fitted amplitudes give a' (Eq. 6) and the fitted offsets b.

Axial positions: ``z_stack_nm`` is the stage position of each slice (slice ``s`` at
``s * z_step_nm``). The focal positions are fitted in that frame, then moved into the
CONVENTIONS.md frame by the one shift that puts the planes, on average, at their nominal
``(k + 0.5) * dz``; what remains per plane is ``PSFParams.focal_offsets_nm``.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from engines.calibration.spots import (
    AMP,
    OFFSET,
    SIGMA,
    X0,
    Y0,
    detect_spots,
    extract_rois,
    fit_gaussians,
    robust_noise,
)
from engines.config import Geometry, NoiseParams, PSFParams
from engines.errors import FormatError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlaneWidths:
    """Bead fits of one plane. Arrays are ``(beads, Z)``, NaN where a fit failed."""

    width_nm: np.ndarray
    amplitude: np.ndarray
    offset: np.ndarray

    @property
    def beads(self) -> int:
        return int(self.width_nm.shape[0])

    def median_width_nm(self) -> np.ndarray:
        """``(Z,)`` median width over beads, NaN where fewer than half the beads fit."""
        good = np.isfinite(self.width_nm).sum(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: handled below
            med = np.nanmedian(self.width_nm, axis=0)
        return np.where(good * 2 >= self.beads, med, np.nan)


@dataclass(frozen=True)
class PSFCalibration:
    """Fitted PSF plus what it was fitted from."""

    psf: PSFParams
    z_stack_nm: np.ndarray
    planes: list[PlaneWidths]
    focal_stack_nm: np.ndarray
    z_shift_nm: float
    rms_rel: float
    a_prime_measured: float

    def to_json(self) -> dict[str, Any]:
        """``{"psf": PSFParams fields, "calibration": diagnostics}`` (``voxloc train --psf``)."""
        spacing = np.diff(self.focal_stack_nm)
        return {
            "psf": self.psf.model_dump(mode="json"),
            "calibration": {
                "z_step_nm": float(self.z_stack_nm[1] - self.z_stack_nm[0]),
                "slices": int(len(self.z_stack_nm)),
                "beads_per_plane": [p.beads for p in self.planes],
                "focal_stack_nm": [float(v) for v in self.focal_stack_nm],
                "stack_to_sample_shift_nm": self.z_shift_nm,
                "plane_spacing_nm": [float(v) for v in spacing],
                "width_rms_relative_residual": self.rms_rel,
                "a_prime_measured": self.a_prime_measured,
            },
        }


def measure_plane(
    stack: np.ndarray,
    *,
    px_nm: float,
    roi_half_px: int,
    threshold_sigma: float,
    min_snr: float = 5.0,
) -> PlaneWidths:
    """Fit every bead of one ``(Z, H, W)`` z-stack in every slice."""
    stack = np.asarray(stack, dtype=np.float64)
    proj = stack.max(axis=0)
    spots = detect_spots(
        proj,
        threshold_sigma=threshold_sigma,
        roi_half_px=roi_half_px,
        isolation_px=2.0 * roi_half_px,
    )
    z = stack.shape[0]
    rc = np.floor(spots.xy_px[:, ::-1]).astype(int)
    if len(rc) == 0:
        empty = np.zeros((0, z))
        return PlaneWidths(empty, empty, empty)
    rois = np.concatenate([extract_rois(stack[s], rc, roi_half_px) for s in range(z)])
    params, ok, _ = fit_gaussians(rois)
    noise = np.array([robust_noise(stack[s])[1] for s in range(z)]).repeat(len(rc))
    ok &= params[:, AMP] > min_snr * noise
    ok &= np.hypot(params[:, X0] - roi_half_px, params[:, Y0] - roi_half_px) < 2.0
    ok &= params[:, SIGMA] < roi_half_px / 2.0  # the window must hold +-2 sigma

    def table(col: int, scale: float = 1.0) -> np.ndarray:
        return np.where(ok, params[:, col] * scale, np.nan).reshape(z, len(rc)).T

    return PlaneWidths(table(SIGMA, px_nm), table(AMP), table(OFFSET))


def defocus_width(defocus_nm: np.ndarray, r0: float, d: float, a3: float, b4: float) -> np.ndarray:
    """Eq. 5 in numpy; the radicand is floored so that bad trial parameters stay finite."""
    u = defocus_nm / d
    return r0 * np.sqrt(np.maximum(1.0 + u**2 + a3 * u**3 + b4 * u**4, 1e-6))


def fit_defocus_curve(z_nm: np.ndarray, widths_nm: np.ndarray) -> tuple[np.ndarray, float]:
    """Shared (r0, D, A, B) and per-plane focal positions from ``(P, Z)`` median widths.

    Returns ``(theta, rms_rel)``: ``theta = [r0, D, A, B, f_0 .. f_{P-1}]`` (nm, with the
    focal positions in the frame of ``z_nm``) and the rms relative width residual.
    """
    planes = widths_nm.shape[0]
    good = np.isfinite(widths_nm)

    def resid(th: np.ndarray) -> np.ndarray:
        defocus = th[4:, None] - z_nm[None, :]
        model = defocus_width(defocus, *th[:4])
        return ((model - widths_nm) / widths_nm)[good]

    r0 = float(np.nanmin(widths_nm))
    focal0 = np.array([z_nm[np.nanargmin(w)] for w in widths_nm])
    lo = [1.0, 10.0, -1.0, 0.0] + [z_nm.min() - 5e3] * planes
    hi = [1e4, 1e4, 1.0, 1.0] + [z_nm.max() + 5e3] * planes
    best = None
    for d0 in (150.0, 300.0, 600.0):
        th0 = np.concatenate([[r0, d0, 0.0, 0.0], focal0])
        sol = least_squares(resid, th0, bounds=(lo, hi), x_scale="jac")
        if best is None or sol.cost < best.cost:
            best = sol
    assert best is not None
    return best.x, float(np.sqrt(np.mean(best.fun**2)))


def _a_prime(planes: list[PlaneWidths], th: np.ndarray, z_nm: np.ndarray, scale: float) -> float:
    """Median of amp * 2 pi r^2 (Eq. 6) over fits within +-D/2 of focus, in PSF units."""
    vals = []
    for k, p in enumerate(planes):
        near = np.abs(th[4 + k] - z_nm) < th[1] / 2.0
        amp, w = p.amplitude[:, near], p.width_nm[:, near]
        vals.append((amp * 2.0 * math.pi * w**2)[np.isfinite(amp)])
    allv = np.concatenate(vals)
    if len(allv) == 0:
        raise FormatError("no bead fit near focus: cannot measure a' (is the z range too short?)")
    return float(np.median(allv)) / scale


def calibrate_psf(
    stacks: list[np.ndarray],
    *,
    z_step_nm: float,
    geometry: Geometry,
    noise: NoiseParams | None = None,
    roi_half_px: int = 9,
    threshold_sigma: float = 8.0,
    min_beads: int = 3,
    a_prime: float | None = None,
) -> PSFCalibration:
    """PSF parameters of Eqs. 4-6 from one ``(Z, H, W)`` bead z-stack per plane."""
    noise = noise or NoiseParams()
    if len(stacks) != geometry.planes:
        raise FormatError(f"expected {geometry.planes} z-stacks (one per plane), got {len(stacks)}")
    if z_step_nm == 0 or not math.isfinite(z_step_nm):
        raise FormatError(f"z step must be a non-zero number of nm, got {z_step_nm}")
    depths = {np.shape(s)[0] for s in stacks if np.ndim(s) == 3}
    if any(np.ndim(s) != 3 for s in stacks) or len(depths) != 1 or depths.pop() < 5:
        raise FormatError(
            "expected every z-stack as (Z, H, W) with the same Z >= 5 slices, got "
            f"shapes {[np.shape(s) for s in stacks]}"
        )
    z_nm = np.arange(np.shape(stacks[0])[0]) * z_step_nm
    planes = []
    for k, st in enumerate(stacks):
        pw = measure_plane(
            st, px_nm=geometry.px_nm, roi_half_px=roi_half_px, threshold_sigma=threshold_sigma
        )
        if pw.beads < min_beads:
            raise FormatError(
                f"plane {k}: found {pw.beads} isolated bead(s) above "
                f"{threshold_sigma} sigma, need at least {min_beads}"
            )
        log.info("plane %d: %d beads", k, pw.beads)
        planes.append(pw)
    widths = np.stack([p.median_width_nm() for p in planes])
    if (np.isfinite(widths).sum(axis=1) < 5).any():
        raise FormatError(
            f"too few slices with bead fits per plane: "
            f"{np.isfinite(widths).sum(axis=1).tolist()} (need 5)"
        )
    th, rms = fit_defocus_curve(z_nm, widths)
    focal = th[4:]
    if np.any(np.diff(focal) <= 0):
        raise FormatError(
            f"fitted focal positions {np.round(focal).tolist()} nm do not increase with the "
            "plane index: is the z step sign reversed, or the stacks not in plane order?"
        )
    nominal = (np.arange(geometry.planes) + 0.5) * geometry.dz_nm
    shift = float(np.mean(focal - nominal))
    measured = _a_prime(planes, th, z_nm, noise.intensity_scale())
    bg = float(np.nanmedian(np.concatenate([p.offset.ravel() for p in planes])))
    b = max(0.0, (bg - noise.expected_background(0.0)) / noise.intensity_scale())
    psf = PSFParams(
        a_prime=a_prime if a_prime is not None else measured,
        b=b,
        r0_nm=float(th[0]),
        d_nm=float(th[1]),
        a3=float(th[2]),
        b4=float(th[3]),
        focal_offsets_nm=tuple(float(v) for v in focal - shift - nominal),
    )
    return PSFCalibration(psf, z_nm, planes, focal, shift, rms, measured)


def plot_widths(cal: PSFCalibration, path: Path) -> Path:
    """Fig. 2-like plot: measured bead widths vs the fitted defocus curve, per plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = cal.psf
    z = cal.z_stack_nm - cal.z_shift_nm
    fine = np.linspace(z.min(), z.max(), 400)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for k, pw in enumerate(cal.planes):
        colour = f"C{k}"
        ax.plot(
            z, pw.median_width_nm(), "o", mfc="none", color=colour, ms=4, label=f"plane {k} beads"
        )
        focal = cal.focal_stack_nm[k] - cal.z_shift_nm
        ax.plot(
            fine,
            defocus_width(focal - fine, p.r0_nm, p.d_nm, p.a3, p.b4),
            "-",
            color=colour,
            lw=1.2,
        )
    ax.set_xlabel("bead depth z [nm]")
    ax.set_ylabel("PSF width r [nm]")
    ax.set_title(
        f"r0 {p.r0_nm:.0f} nm, D {p.d_nm:.0f} nm, A {p.a3:.2e}, B {p.b4:.2e}; "
        f"rms {100 * cal.rms_rel:.1f}%",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
