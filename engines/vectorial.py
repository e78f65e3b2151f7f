"""A realistic multi-plane microscope: the vectorial PSF of psfmodels (Aguet et al. 2009).

Used to test what the paper's Gaussian leaves out (Airy rings, defocus asymmetric about
focus, depth-dependent spherical aberration from an oil objective imaging into water): bead
z-stacks to calibrate a spline from, and test frames to evaluate on.

Sample coordinates follow CONVENTIONS.md: a molecule at z lies ``depth_offset_nm + z``
above the coverslip. Plane ``k`` keeps one fixed objective position; it is chosen so that the
plane's best focus (the molecule z of maximum peak intensity) is ``(k + 0.5) * dz``. The
PSF is radially symmetric, so it is tabulated as ``I_k(r, z)`` (energy-normalised per
``z``); the integrals of ``I_k`` over a pixel are tabulated on a grid of pixel/16 offsets
and interpolated (bilinear laterally, linear in z), at exact molecule positions.
Brightness: a weight-1 molecule centred on a pixel at focus has the peak pixel
a' / (2 pi r0^2) ~ 450 of the settings' PSF (averaged over planes), as the paper's.

psfmodels is the optional extra ``vectorial`` (``pip install voxloc[vectorial]``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engines.config import SimSettings
from engines.errors import EngineError

log = logging.getLogger(__name__)


def _psfmodels():
    try:
        import psfmodels
    except ImportError as exc:
        raise EngineError(
            "the vectorial PSF needs psfmodels: pip install 'voxloc[vectorial]'"
        ) from exc
    return psfmodels


@dataclass(frozen=True)
class VectorialOptics:
    """Objective, sample and planes; lengths in nm (the issue's microscope by default)."""

    na: float = 1.40
    wavelength_nm: float = 670.0
    n_immersion: float = 1.518
    n_coverslip: float = 1.515
    n_sample: float = 1.33
    depth_offset_nm: float = 800.0  # z = 0 lies this far above the coverslip
    radius_nm: float = 2400.0  # the PSF is tabulated (and a molecule drawn) this far out
    dr_nm: float = 20.0
    z_step_nm: float = 20.0

    def params(self) -> dict[str, float]:
        return {
            "NA": self.na,
            "ni": self.n_immersion,
            "ni0": self.n_immersion,
            "ng": self.n_coverslip,
            "ng0": self.n_coverslip,
            "ns": self.n_sample,
        }


def radial_profiles(optics: VectorialOptics, stage_um: list[float], depth_um: float) -> np.ndarray:
    """``(len(stage_um), R)`` energy-normalised I(r) per nm^2 for one emitter depth."""
    pm = _psfmodels()
    dxy_um = optics.dr_nm / 1000.0
    n_r = int(round(optics.radius_nm / optics.dr_nm)) + 1
    zv = list(stage_um) + ([stage_um[-1]] if len(stage_um) % 2 == 0 else [])
    vol = pm.vectorial_psf(
        zv=np.asarray(zv, dtype=np.float64),
        nx=2 * n_r - 1,
        dxy=dxy_um,
        pz=depth_um,
        wvl=optics.wavelength_nm / 1000.0,
        params=optics.params(),
        normalize=False,
    )[: len(stage_um)]
    c = n_r - 1
    prof = np.asarray(vol[:, c, c:], dtype=np.float64)  # central row, r = 0 .. radius
    r = np.arange(n_r) * optics.dr_nm
    energy = _trapezoid(2 * math.pi * r * prof, r, axis=1)
    return prof / energy[:, None]


def pixel_tables(profiles: np.ndarray, optics: VectorialOptics, px_nm: float) -> np.ndarray:
    """Pixel integrals of radial profiles ``(..., R)``: ``(..., Q, Q)`` over one quadrant.

    Entry ``[i, j]`` is the integral of I over the pixel whose centre lies
    ``(j, i) * px / FINE`` nm from the emitter (trapezoid rule on a px / FINE grid).
    """
    from scipy.interpolate import CubicSpline

    h = px_nm / FINE
    n_q = int(optics.radius_nm // h) + 1
    n_full = n_q + FINE // 2  # the box reaches half a pixel beyond the last centre
    r = np.arange(profiles.shape[-1]) * optics.dr_nm
    axis = np.arange(-FINE // 2, n_full) * h
    rr = np.hypot(axis[:, None], axis[None, :])
    spline = CubicSpline(r, profiles, axis=-1)
    img = np.where(rr <= r[-1], spline(np.minimum(rr, r[-1])), 0.0)  # (..., A, A)
    kern = np.ones(FINE + 1)
    kern[[0, -1]] = 0.5
    kern *= h  # integral over one pixel width
    for ax in (-1, -2):
        img = np.apply_along_axis(lambda v: np.convolve(v, kern, mode="valid"), ax, img)
    return img[..., :n_q, :n_q]


FINE = 16  # fine grid steps per pixel of the pixel-integral tables


def _trapezoid(y: np.ndarray, x: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.integrate import trapezoid  # numpy renamed trapz; scipy has both eras

    return np.asarray(trapezoid(y, x, axis=axis))


def peak_focus(z_nm: np.ndarray, peak: np.ndarray, frac: float = 0.8) -> float:
    """Focal position: vertex of a parabola through the peaks above ``frac`` of their
    maximum (on-axis intensity is flat-topped and rippled near focus; the parabola is not)."""
    z_nm, peak = np.asarray(z_nm, float), np.asarray(peak, float)
    good = np.isfinite(peak)
    z_nm, peak = z_nm[good], peak[good]
    i = int(np.argmax(peak))
    sel = np.flatnonzero(peak >= frac * peak[i])
    # keep the run of points around the maximum
    lo, hi = i, i
    while lo - 1 in sel:
        lo -= 1
    while hi + 1 in sel:
        hi += 1
    if hi - lo < 4:
        lo, hi = max(0, i - 2), min(len(peak) - 1, i + 2)
    zz, pp = z_nm[lo : hi + 1], peak[lo : hi + 1]
    a, b, _ = np.polyfit(zz - zz.mean(), pp, 2)
    if a >= 0:
        return float(z_nm[i])
    return float(np.clip(zz.mean() - b / (2 * a), zz.min(), zz.max()))


def _centre_pixel(profiles: np.ndarray, optics: VectorialOptics, px_nm: float) -> np.ndarray:
    """Integral of I over the pixel centred on the emitter, ``(...,)``."""
    sub = (np.arange(12) + 0.5) / 12 * px_nm - px_nm / 2
    rr = np.hypot(sub[:, None], sub[None, :]).ravel()
    r = np.arange(profiles.shape[-1]) * optics.dr_nm
    vals = np.stack([np.interp(rr, r, p) for p in profiles.reshape(-1, profiles.shape[-1])])
    return (vals.mean(-1) * px_nm**2).reshape(profiles.shape[:-1])


def focus_stage(optics: VectorialOptics, focus_z_nm: float, px_nm: float) -> float:
    """Objective position (psfmodels ``zv``, um) whose best-focus molecule z (maximum
    centre-pixel intensity, :func:`peak_focus`) is ``focus_z_nm``."""
    depth = (optics.depth_offset_nm + focus_z_nm) / 1000.0
    stage = 1.15 * depth + 0.1  # oil objective into water: ~1.15 um of stage per um
    offsets = np.linspace(-0.3, 0.3, 31)
    for _ in range(4):
        pk = [
            _centre_pixel(radial_profiles(optics, [stage], depth + d), optics, px_nm)[0]
            for d in offsets
        ]
        err = peak_focus(depth + offsets, np.array(pk)) - depth
        stage -= 1.15 * err
        if abs(err) < 0.002:
            break
    return stage


class VectorialPSF:
    """:class:`~engines.psf_model.PSFModel` of the vectorial microscope for some settings."""

    def __init__(
        self,
        settings: SimSettings,
        optics: VectorialOptics | None = None,
        *,
        z_range_nm: tuple[float, float] | None = None,
    ) -> None:
        self.optics = o = optics or VectorialOptics()
        self.settings = settings
        g = settings.geometry
        lo, hi = z_range_nm or (-g.dz_nm, g.depth_nm + g.dz_nm)
        self.z_nm = np.arange(lo, hi + o.z_step_nm / 2, o.z_step_nm)
        self.focal_nm = np.asarray(settings.focal_planes_nm())
        key = json.dumps([asdict(o), g.px_nm, self.z_nm.tolist(), self.focal_nm.tolist()])
        cache = _cache_dir() / f"vectorial-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                self.stage_um, tables = z["stage_um"].tolist(), z["tables"]
        else:
            self.stage_um = [focus_stage(o, float(f), g.px_nm) for f in self.focal_nm]
            prof = np.stack(
                [
                    radial_profiles(o, self.stage_um, (o.depth_offset_nm + z) / 1000.0)
                    for z in self.z_nm
                ],
                axis=1,
            )  # (P, Z, R)
            tables = pixel_tables(prof, o, g.px_nm).astype(np.float32)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, stage_um=np.asarray(self.stage_um), tables=tables)
        log.info("vectorial planes: objective at %s um", [round(s, 4) for s in self.stage_um])
        self.table = torch.as_tensor(tables)  # (P, Z, Q, Q)
        self.half_px = int(math.ceil(o.radius_nm / g.px_nm)) - 1
        p = settings.psf
        peak = float(self.table[:, :, 0, 0].max(dim=1).values.mean())
        self.photons = p.a_prime / (2 * math.pi * p.r0_nm**2) / peak

    def window_px(self) -> int:
        return 2 * self.half_px + 1

    def describe(self) -> dict:
        """Optics, objective positions and brightness, for a truth file."""
        return {
            "optics": asdict(self.optics),
            "objective_um": [float(s) for s in self.stage_um],
            "focal_nm": self.focal_nm.tolist(),
            "photons_per_plane": self.photons,
        }

    def windows(
        self, plane: int, x_nm: torch.Tensor, y_nm: torch.Tensor, z_nm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, S, S)`` pixel values of ``photons``-bright molecules and window corners."""
        g = self.settings.geometry
        px, side = g.px_nm, self.window_px()
        dev, dtype = x_nm.device, x_nm.dtype
        table = self.table[plane].to(dev, dtype)  # (Z, Q, Q)
        n_z, n_q = table.shape[0], table.shape[1]
        col0 = torch.floor(x_nm / px).long() - self.half_px
        row0 = torch.floor(y_nm / px).long() - self.half_px
        pix = (torch.arange(side, device=dev, dtype=dtype) + 0.5) * px
        fx = ((col0.to(dtype) * px - x_nm)[:, None] + pix).abs() * (FINE / px)  # (N, S)
        fy = ((row0.to(dtype) * px - y_nm)[:, None] + pix).abs() * (FINE / px)
        zf = ((z_nm - float(self.z_nm[0])) / self.optics.z_step_nm).clamp(0, n_z - 1)
        zi = torch.floor(zf).long().clamp(max=n_z - 2)
        tz = (zf - zi.to(dtype))[:, None, None]
        ix = torch.floor(fx).long().clamp(max=n_q - 2)
        iy = torch.floor(fy).long().clamp(max=n_q - 2)
        tx = (fx - ix.to(dtype)).clamp(max=1.0)[:, None, :]
        ty = (fy - iy.to(dtype)).clamp(max=1.0)[:, :, None]
        ok = ((fx < n_q - 1)[:, None, :] & (fy < n_q - 1)[:, :, None]).to(dtype)
        flat = table.reshape(-1)
        base = (zi[:, None, None] * n_q + iy[:, :, None]) * n_q + ix[:, None, :]

        def bilinear(b: torch.Tensor) -> torch.Tensor:
            top = flat[b] * (1 - tx) + flat[b + 1] * tx
            bottom = flat[b + n_q] * (1 - tx) + flat[b + n_q + 1] * tx
            return top * (1 - ty) + bottom * ty

        val = (1 - tz) * bilinear(base) + tz * bilinear(base + n_q * n_q)
        return val * ok * self.photons, row0, col0

    def render(
        self,
        xyz_nm: torch.Tensor,
        weights: torch.Tensor,
        drift_nm: torch.Tensor,
        *,
        height: int,
        width: int,
    ) -> torch.Tensor:
        from engines.spline_psf import scatter_windows

        batch, planes = xyz_nm.shape[0], self.settings.geometry.planes
        keep = weights != 0
        b_idx = torch.arange(batch, device=xyz_nm.device)[:, None].expand_as(keep)[keep]
        xyz, w = xyz_nm[keep], weights[keep]
        out = []
        for k in range(planes):
            d = drift_nm[b_idx, k]
            win, r0, c0 = self.windows(k, xyz[:, 0] + d[:, 0], xyz[:, 1] + d[:, 1], xyz[:, 2])
            out.append(
                scatter_windows(
                    win * w[:, None, None], r0, c0, b_idx, frames=batch, height=height, width=width
                )
            )
        return torch.stack(out, dim=1)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "voxloc"
