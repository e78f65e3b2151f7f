"""Simulated quad-camera scenes for ``voxloc camera`` and ``voxloc demo``.

A :class:`Scene` draws, for every time point, the molecules that blink on (uniformly
spread, or on random 3D filaments so the rendered image looks like the paper's Fig. 11)
and renders what each *camera* sees: the paper's PSF and noise model
(:mod:`engines.psf`, :mod:`engines.simulator`), per-plane lateral drift, a slow stage
drift, and a per-camera affine misalignment. The misalignment is the inverse of the
registration the service must apply, so :meth:`Scene.registration` gives the matrices to
configure (``PUT /registration``).

Frames are deterministic in ``(seed, frame index)``: four separate processes that each
publish one plane of the same scene send consistent frame sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.config import SimSettings
from engines.psf import render_planes
from engines.simulator import Simulator

Structure = Literal["uniform", "filaments"]
FILAMENT_JITTER_NM = 15.0  # label displacement around the filament axis


@dataclass(frozen=True)
class Misalignment:
    """Per-camera affine misalignment, drawn within these bounds (camera 0 stays exact)."""

    max_shift_px: float = 1.5
    max_rotation_deg: float = 0.5
    max_scale: float = 0.005

    def draw(self, planes: int, rng: np.random.Generator) -> np.ndarray:
        """``(P, 2, 3)`` float64 camera -> reference affines, pixel units, plane 0 identity."""
        out = np.zeros((planes, 2, 3))
        out[:, 0, 0] = out[:, 1, 1] = 1.0
        for k in range(1, planes):
            angle = math.radians(rng.uniform(-1, 1) * self.max_rotation_deg)
            scale = 1.0 + rng.uniform(-1, 1) * self.max_scale
            c, s = scale * math.cos(angle), scale * math.sin(angle)
            out[k, :, :2] = [[c, -s], [s, c]]
            out[k, :, 2] = rng.uniform(-1, 1, 2) * self.max_shift_px
        return out


class SceneConfig(BaseModel):
    """What :class:`Scene` draws. Lengths in nm, rates per frame."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    settings: SimSettings = Field(default_factory=SimSettings)
    molecules: int = Field(30, ge=0, description="blinking molecules per frame in the field")
    structure: Structure = "filaments"
    filaments: int = Field(6, ge=0, description="number of filaments (>= 1 for filaments)")
    misalign: Misalignment | None = Field(default_factory=Misalignment)
    stage_drift_nm_per_frame: tuple[float, float] = (0.0, 0.0)
    seed: int = 0

    @model_validator(mode="after")
    def _some_filaments(self) -> SceneConfig:
        if self.structure == "filaments" and self.filaments < 1:
            raise ValueError(
                f"filaments must be >= 1 for structure 'filaments', got {self.filaments}"
            )
        return self


def _filament_points(cfg: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Dense ``(K, 3)`` points (nm) along smooth random 3D curves crossing the field."""
    g = cfg.settings.geometry
    w_nm, h_nm, depth = g.width * g.px_nm, g.height * g.px_nm, g.depth_nm
    step_nm = 10.0
    n_steps = int(2.5 * max(w_nm, h_nm) / step_nm)
    curves = []
    for _ in range(cfg.filaments):
        pos = np.array([rng.uniform(0, w_nm), rng.uniform(0, h_nm)])
        heading = rng.uniform(0, 2 * math.pi)
        angles = heading + np.cumsum(rng.normal(0, 0.02, n_steps))  # gentle bends
        xy = pos + np.cumsum(step_nm * np.stack([np.cos(angles), np.sin(angles)], 1), 0)
        xy -= xy[n_steps // 2] - pos  # centre the curve on its start point
        # depth varies slowly along the filament, as in Fig. 11
        phase, periods = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.0)
        t = np.linspace(0, 1, n_steps)
        z = depth * (0.5 + 0.38 * np.sin(phase + 2 * math.pi * periods * t))
        pts = np.column_stack([xy, z])
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < w_nm) & (pts[:, 1] >= 0) & (pts[:, 1] < h_nm)
        curves.append(pts[inside])
    pts = np.concatenate(curves) if curves else np.zeros((0, 3))
    if len(pts) == 0:
        raise ValueError("no filament crosses the field of view; try another seed")
    return pts


class Scene:
    """Renders the camera images of a simulated acquisition, one time point at a time."""

    def __init__(self, cfg: SceneConfig) -> None:
        self.cfg = cfg
        self.settings = cfg.settings
        self._sim = Simulator(cfg.settings, seed=cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        planes = cfg.settings.geometry.planes
        self.affines = (
            cfg.misalign.draw(planes, rng)
            if cfg.misalign
            else Misalignment(0, 0, 0).draw(planes, rng)
        )
        self._inverse = np.stack([_invert(a) for a in self.affines])
        self._points = _filament_points(cfg, rng) if cfg.structure == "filaments" else None
        self._focal = torch.tensor(cfg.settings.focal_planes_nm(), dtype=torch.float32)

    @property
    def planes(self) -> int:
        return self.settings.geometry.planes

    def registration(self) -> list[list[list[float]]]:
        """Per-camera ``(2, 3)`` camera -> reference affines that undo the scene's
        misalignment, in the pixel coordinates of docs/protocol.md Sec. 4 (x = column,
        y = row, origin at the outer corner of pixel ``[0, 0]``)."""
        return self.affines.tolist()

    def molecules(self, frame: int) -> np.ndarray:
        """``(M, 4)`` float32 ground truth of time point ``frame``: x, y, z (nm), weight."""
        rng = np.random.default_rng([self.cfg.seed, frame])
        g, s = self.settings.geometry, self.settings
        n = int(rng.poisson(self.cfg.molecules)) if self.cfg.molecules else 0
        if self._points is not None:
            xyz = self._points[rng.integers(0, len(self._points), n)]
            xyz = xyz + rng.normal(0, FILAMENT_JITTER_NM, xyz.shape)
        else:
            xyz = rng.uniform(0, 1, (n, 3)) * [g.width * g.px_nm, g.height * g.px_nm, g.depth_nm]
        xyz[:, 2] = np.clip(xyz[:, 2], 0, g.depth_nm * (1 - 1e-6))
        xyz[:, :2] += np.asarray(self.cfg.stage_drift_nm_per_frame) * frame
        weight = rng.uniform(s.weight_min, s.weight_max, n)
        return np.column_stack([xyz, weight]).astype(np.float32)

    def frame(self, index: int, planes: list[int] | None = None) -> dict[int, np.ndarray]:
        """Camera images of time point ``index``: plane -> ``(H, W)`` float32 (paper noise)
        or uint16 ADU (camera noise modes)."""
        planes = list(range(self.planes)) if planes is None else planes
        mol = torch.from_numpy(self.molecules(index))
        g, s = self.settings.geometry, self.settings
        self._sim.gen.manual_seed(self.cfg.seed * 1_000_003 + index)
        drift = torch.zeros(g.planes, 2)
        if s.drift_max_nm > 0:
            drift[1:] = (
                torch.rand(g.planes - 1, 2, generator=self._sim.gen) * 2 - 1
            ) * s.drift_max_nm
        out = {}
        for k in planes:
            if not 0 <= k < self.planes:
                raise ValueError(f"plane {k} outside 0..{self.planes - 1}")
            xyz = self._to_camera(mol[:, :3], k)
            clean = render_planes(
                xyz[None],
                mol[None, :, 3],
                drift[None, k : k + 1],
                self._focal[k : k + 1],
                px_nm=g.px_nm,
                height=g.height,
                width=g.width,
                psf=s.psf,
            )
            noisy = self._sim.add_noise(clean + s.psf.b)[0, 0].numpy()
            out[k] = self._sim.camera.to_frame(noisy)
        return out

    def _to_camera(self, xyz_nm: torch.Tensor, plane: int) -> torch.Tensor:
        """Reference-plane positions -> where camera ``plane`` sees them (nm, its pixels)."""
        px = self.settings.geometry.px_nm
        inv = torch.from_numpy(self._inverse[plane]).float()
        q = xyz_nm[:, :2] / px  # reference pixel coordinates (protocol.md Sec. 4)
        p = q @ inv[:, :2].T + inv[:, 2]
        return torch.cat([p * px, xyz_nm[:, 2:]], dim=1)


def _invert(affine: np.ndarray) -> np.ndarray:
    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]
