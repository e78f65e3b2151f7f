"""Simulated bead recordings with known truth, for tests and for trying the commands.

* :func:`simulate_registration_beads`: one image stack per camera of beads on a coverslip,
  each camera seeing the reference plane through its own affine, with missing and
  spurious beads.
* :func:`simulate_bead_zstacks`: one z-stack per plane of beads moved through focus in
  known steps, drawn from the paper's PSF (Eqs. 4-6) and the settings' noise model.

Rendering reuses :func:`engines.psf.render_planes` and :meth:`Simulator.add_noise`, so the
beads follow exactly the observation model the networks are trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from engines.config import SimSettings
from engines.psf import render_planes
from engines.psf_model import PSFModel
from engines.simulator import Simulator


@dataclass(frozen=True)
class RegistrationBeads:
    """Attributes:
    images: per camera ``(frames, H, W)`` float32 frames (frame units).
    affines: ``(P, 2, 3)`` float64 true maps camera pixels -> reference pixels.
    ref_xy_px: ``(M, 2)`` float64 true bead centres in the reference plane, pixels.
    """

    images: list[np.ndarray]
    affines: np.ndarray
    ref_xy_px: np.ndarray


@dataclass(frozen=True)
class BeadZStacks:
    """Attributes:
    stacks: per plane ``(Z, H, W)`` float32 frames.
    z_nm: ``(Z,)`` bead axial position of every slice (sample coordinates, CONVENTIONS), nm.
    focal_nm: ``(P,)`` true focal position of every plane, nm.
    """

    stacks: list[np.ndarray]
    z_nm: np.ndarray
    focal_nm: np.ndarray

    @property
    def z_step_nm(self) -> float:
        return float(self.z_nm[1] - self.z_nm[0])


def random_affines(
    planes: int,
    *,
    height: int,
    width: int,
    max_rotation_deg: float = 2.0,
    max_scale: float = 0.02,
    max_shift_px: float = 10.0,
    seed: int = 0,
) -> np.ndarray:
    """``(P, 2, 3)`` random camera -> reference affines about the image centre.

    Plane 0 is the reference: identity.
    """
    rng = np.random.default_rng(seed)
    centre = np.array([width / 2.0, height / 2.0])
    out = np.zeros((planes, 2, 3))
    out[0, :, :2] = np.eye(2)
    for k in range(1, planes):
        th = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg))
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        lin = rot @ np.diag(1.0 + rng.uniform(-max_scale, max_scale, 2))
        shift = rng.uniform(-max_shift_px, max_shift_px, 2)
        out[k, :, :2] = lin
        out[k, :, 2] = centre + shift - lin @ centre
    return out


def apply_affine(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points mapped by a ``(2, 3)`` affine."""
    return xy @ affine[:, :2].T + affine[:, 2]


def invert_affine(affine: np.ndarray) -> np.ndarray:
    lin_inv = np.linalg.inv(affine[:, :2])
    return np.concatenate([lin_inv, -(lin_inv @ affine[:, 2])[:, None]], axis=1)


def _render(
    settings: SimSettings, xyz_nm: np.ndarray, weights: np.ndarray, focal_nm: float, sim: Simulator
) -> np.ndarray:
    """Noisy ``(B, H, W)`` frames of one plane for ``(B, M, 3)`` bead positions."""
    g = settings.geometry
    xyz = torch.tensor(np.ascontiguousarray(xyz_nm), dtype=torch.float32)
    w = torch.tensor(np.ascontiguousarray(weights), dtype=torch.float32)
    clean = render_planes(
        xyz,
        w,
        torch.zeros(xyz.shape[0], 1, 2),
        torch.tensor([focal_nm]),
        px_nm=g.px_nm,
        height=g.height,
        width=g.width,
        psf=settings.psf,
    )
    return sim.add_noise(clean + settings.psf.b)[:, 0].numpy().astype(np.float32)


def _render_model(
    settings: SimSettings,
    psf: PSFModel,
    xyz_nm: np.ndarray,
    weights: np.ndarray,
    plane: int,
    sim: Simulator,
) -> np.ndarray:
    """Noisy ``(B, H, W)`` frames of one plane drawn from ``psf``."""
    g = settings.geometry
    xyz = torch.tensor(np.ascontiguousarray(xyz_nm), dtype=torch.float32)
    w = torch.tensor(np.ascontiguousarray(weights), dtype=torch.float32)
    drift = torch.zeros(xyz.shape[0], g.planes, 2)
    clean = psf.render(xyz, w, drift, height=g.height, width=g.width)[:, plane]
    return sim.add_noise(clean + settings.psf.b).numpy().astype(np.float32)


def simulate_registration_beads(
    settings: SimSettings,
    affines: np.ndarray,
    *,
    beads: int = 60,
    frames: int = 3,
    spurious_frac: float = 0.05,
    missing_frac: float = 0.05,
    brightness: float = 20.0,
    bead_z_nm: float | None = None,
    seed: int = 0,
) -> RegistrationBeads:
    """Bead images of every camera; bead ``m`` sits at ``ref_xy_px[m]`` in the reference plane.

    Each camera loses ``missing_frac`` of the beads and gains ``spurious_frac * beads``
    spots of its own (dust, hot spots); ``brightness`` scales a' (beads outshine dyes).
    """
    g = settings.geometry
    rng = np.random.default_rng(seed)
    sim = Simulator(settings, seed=seed)
    ref = rng.uniform(2.0, [g.width - 2.0, g.height - 2.0], size=(beads, 2))
    z = g.depth_nm / 2.0 if bead_z_nm is None else bead_z_nm
    focal = settings.focal_planes_nm()
    images = []
    for k in range(g.planes):
        cam_xy = apply_affine(invert_affine(affines[k]), ref)
        cam_xy = cam_xy[rng.random(beads) >= missing_frac]
        n_sp = int(round(spurious_frac * beads))
        extra = rng.uniform(0.0, [g.width, g.height], size=(n_sp, 2))
        xy = np.concatenate([cam_xy, extra])
        wts = np.concatenate([rng.uniform(0.8, 1.2, len(cam_xy)), rng.uniform(0.5, 1.5, n_sp)])
        xyz = np.concatenate([xy * g.px_nm, np.full((len(xy), 1), z)], axis=1)
        xyz = np.broadcast_to(xyz, (frames, *xyz.shape))
        wts = np.broadcast_to(wts * brightness, (frames, len(wts)))
        images.append(_render(settings, xyz, wts, focal[k], sim))
    return RegistrationBeads(images, affines, ref)


def simulate_bead_zstacks(
    settings: SimSettings,
    *,
    z_step_nm: float = 50.0,
    z_range_nm: tuple[float, float] | None = None,
    spacing_px: int = 24,
    brightness: float = 20.0,
    seed: int = 0,
    psf: PSFModel | None = None,
) -> BeadZStacks:
    """One z-stack per plane of beads on a grid (``spacing_px`` apart, jittered).

    The beads move together through ``z_range_nm`` (default: the planes' axial range
    extended by one plane spacing on both sides) in steps of ``z_step_nm``. ``psf``: draw
    them from this PSF (e.g. :class:`~engines.vectorial.VectorialPSF`) instead of the
    settings' own.
    """
    g = settings.geometry
    rng = np.random.default_rng(seed)
    sim = Simulator(settings, seed=seed)
    lo, hi = z_range_nm or (-g.dz_nm, g.depth_nm + g.dz_nm)
    z = np.arange(lo, hi + 1e-6, z_step_nm)
    focal = np.asarray(settings.focal_planes_nm())
    half = spacing_px // 2
    stacks = []
    for k in range(g.planes):
        cols = np.arange(half, g.width - half + 1, spacing_px)
        rows = np.arange(half, g.height - half + 1, spacing_px)
        grid = np.stack(np.meshgrid(cols, rows), -1).reshape(-1, 2).astype(np.float64)
        xy = grid + rng.uniform(-2.0, 2.0, grid.shape)
        xyz = np.concatenate(
            [
                np.broadcast_to(xy * g.px_nm, (len(z), len(xy), 2)),
                np.broadcast_to(z[:, None, None], (len(z), len(xy), 1)),
            ],
            axis=2,
        )
        wts = np.full((len(z), len(xy)), brightness)
        if psf is None:
            stacks.append(_render(settings, xyz, wts, float(focal[k]), sim))
        else:
            stacks.append(_render_model(settings, psf, xyz, wts, k, sim))
    return BeadZStacks(stacks, z, focal)


def save_stacks(stacks: list[np.ndarray], out_dir: Path, stem: str) -> list[Path]:
    """Write one uint16 TIFF per camera/plane (``{stem}{k}.tif``); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, arr in enumerate(stacks):
        path = out_dir / f"{stem}{k}.tif"
        tifffile.imwrite(
            path, np.clip(np.round(arr), 0, 65535).astype(np.uint16), photometric="minisblack"
        )
        paths.append(path)
    return paths
