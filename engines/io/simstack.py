"""Simulated test stacks on disk (``voxloc simulate``): TIFF(s) plus a ground-truth CSV.

The stack is an ImageJ hyperstack ``TZYX`` with the pixel size and plane spacing in its
metadata, or with ``per_plane`` one single-camera TIFF per plane (``NAME_plane0.tif``,
...). The ground truth uses the localization CSV format (frame from 1, nm) with
confidence 1 and an extra ``weight`` column. Frames are simulated in chunks into a
temporary memory-mapped array, so long stacks do not need to fit in memory.

By default every frame holds new, independent molecules. With ``blinking`` or a
``stage_drift_nm`` the frames show one fixed sample (engines.kinetics): emitters drawn
once per stack that blink on and off and drift with the stage. The ground truth then
also has an ``emitter`` column (the emitter's id, for checking linking) and holds the
drifted positions the camera saw; the drift itself goes to ``NAME_drift.csv`` (``frame``
from 1, ``x [nm]``, ``y [nm]``, ``z [nm]``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from engines.cameras import cast_frames
from engines.config import SimSettings
from engines.io.atomic import discard, reserve_temp, write_text
from engines.io.loctable import LocTable, TableMeta, open_table_writer
from engines.kinetics import Blinking, Emitters, StageDrift, Structure, draw_emitters
from engines.psf_model import PSFModel
from engines.simulator import Simulator

log = logging.getLogger(__name__)

CHUNK_FRAMES = 16


class SimStackConfig(BaseModel):
    """What to simulate: ``frames`` frames with ``molecules`` molecules each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames: int = Field(20, ge=1)
    molecules: int = Field(50, ge=0, description="mean molecules per frame")
    seed: int = 0
    per_plane: bool = False
    dtype: Literal["auto", "uint16", "float32"] = "auto"
    drift: bool = True
    progress: bool = False
    # a fixed sample (engines.kinetics) instead of independent frames
    blinking: bool = False
    on_frames: float = Field(4.0, ge=1, description="mean on time, frames")
    off_frames: float = Field(100.0, ge=1, description="mean off time, frames")
    structure: Structure = "uniform"
    z_nm: tuple[float, float] | None = Field(
        None, description="z range of the sample, nm (default: the whole depth)"
    )
    stage_drift_nm: tuple[tuple[float, ...], ...] = Field(
        (), description="stage drift terms by power (linear first): DX DY [DZ], nm at the end"
    )

    @field_validator("stage_drift_nm")
    @classmethod
    def _drift_terms(cls, v: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
        for term in v:
            if len(term) not in (2, 3):
                raise ValueError(f"a drift term is DX DY [DZ] in nm, got {len(term)} values")
        return v

    @field_validator("z_nm")
    @classmethod
    def _z_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] <= v[1]:
            raise ValueError(f"the z range LO HI needs LO <= HI, got {v[0]:g} {v[1]:g}")
        return v

    @property
    def fixed_sample(self) -> bool:
        """Frames of one sample that blinks and/or drifts, not independent frames."""
        return self.blinking or bool(self.stage_drift_nm)


@dataclass
class SimStackResult:
    stacks: list[Path]
    truth: Path
    molecules: int
    dtype: str
    shape: tuple[int, int, int, int]
    settings: SimSettings = field(repr=False, default_factory=SimSettings)


def drift_path(truth: Path) -> Path:
    """The per-frame stage drift CSV written next to the ground truth ``NAME_truth.csv``."""
    return truth.with_name(truth.name.removesuffix("_truth.csv") + "_drift.csv")


def output_paths(out: Path, planes: int, per_plane: bool) -> tuple[list[Path], Path]:
    """The stack file(s) and the ground-truth CSV written for ``-o out``."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    truth = out.with_name(f"{stem}_truth.csv")
    if not per_plane:
        return [out], truth
    return [out.with_name(f"{stem}_plane{k}{out.suffix or '.tif'}") for k in range(planes)], truth


def stack_dtype(settings: SimSettings, requested: str) -> np.dtype:
    if requested == "auto":
        return settings.noise.to_camera().frame_dtype
    return np.dtype(requested)


def simulate_stack(
    out: Path, settings: SimSettings, cfg: SimStackConfig, psf: PSFModel | None = None
) -> SimStackResult:
    """Simulate ``cfg.frames`` frames of ``settings.geometry`` and write them atomically
    (``psf``: draw them from this PSF instead of the settings' own)."""
    g = settings.geometry
    dtype = stack_dtype(settings, cfg.dtype)
    stacks, truth_path = output_paths(out, g.planes, cfg.per_plane)
    shape = (cfg.frames, g.planes, g.height, g.width)
    temps: list[Path] = []
    scratch: Path | None = None
    frames = None
    try:
        for p in stacks:
            temps.append(reserve_temp(p))
        scratch = reserve_temp(Path(out).with_name(Path(out).name + ".frames.npy"))
        frames = np.lib.format.open_memmap(scratch, mode="w+", dtype=dtype, shape=shape)
        if cfg.fixed_sample:
            truth, stage_drift = _simulate_sample_into(frames, settings, cfg, psf)
        else:
            truth, stage_drift = _simulate_into(frames, settings, cfg, psf), None
        frames.flush()
        for k, tmp in enumerate(temps):
            data = frames if not cfg.per_plane else frames[:, k]
            _write_tiff(tmp, data, settings, cfg)
        meta = TableMeta(
            frames=cfg.frames,
            height=g.height,
            width=g.width,
            px_nm=g.px_nm,
            dz_nm=g.dz_nm,
            planes=g.planes,
            generated_by="voxloc simulate",
            source=", ".join(p.name for p in stacks),
        )
        with open_table_writer(truth_path, meta, extra_columns=tuple(truth.extra)) as writer:
            writer.write_table(truth)
        if stage_drift is not None:
            write_text(drift_path(truth_path), _drift_csv(stage_drift))
        for tmp, final in zip(temps, stacks, strict=True):
            tmp.replace(final)
    except BaseException:
        discard(temps)
        raise
    finally:
        del frames
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    log.info("wrote %s and %s (%d molecules)", ", ".join(map(str, stacks)), truth_path, len(truth))
    return SimStackResult(stacks, truth_path, len(truth), str(dtype), shape, settings)


def _simulate_into(
    frames: np.ndarray, settings: SimSettings, cfg: SimStackConfig, psf: PSFModel | None = None
) -> LocTable:
    """Fill ``frames`` chunk by chunk; returns the ground truth (frame from 0)."""
    sim = Simulator(settings, seed=cfg.seed, psf=psf)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    bar = tqdm(
        total=cfg.frames, desc="simulate", unit="frame", disable=None if cfg.progress else True
    )  # None: off when not a terminal
    for t0 in range(0, cfg.frames, CHUNK_FRAMES):
        n = min(CHUNK_FRAMES, cfg.frames - t0)
        batch = sim.sample(n, cfg.molecules, drift=cfg.drift)
        frames[t0 : t0 + n] = cast_frames(batch.frames.numpy(), frames.dtype)
        valid = batch.valid.numpy()
        b_idx = np.nonzero(valid)[0]
        parts.append((b_idx + t0, batch.xyz_nm.numpy()[valid], batch.weights.numpy()[valid]))
        bar.update(n)
    bar.close()
    frame = np.concatenate([p[0] for p in parts]).astype(np.int64)
    xyz = np.concatenate([p[1] for p in parts]).astype(np.float64)
    weight = np.concatenate([p[2] for p in parts]).astype(np.float64)
    return LocTable(frame, xyz, np.ones(len(frame)), {"weight": weight})


def _simulate_sample_into(
    frames: np.ndarray, settings: SimSettings, cfg: SimStackConfig, psf: PSFModel | None = None
) -> tuple[LocTable, StageDrift]:
    """Fill ``frames`` with one fixed sample that blinks and drifts (engines.kinetics);
    returns the ground truth (frame from 0, with ``emitter`` ids) and the stage drift."""
    sim = Simulator(settings, seed=cfg.seed, psf=psf)
    drift = StageDrift.polynomial(list(cfg.stage_drift_nm), cfg.frames)
    emitters = _draw_sample(settings, cfg, drift)
    # one row more for the padding id (len(emitters)): also a sample of no emitters pads
    sample_xyz = np.vstack([emitters.xyz_nm, np.zeros((1, 3))])
    sample_w = np.append(emitters.weights, 0.0)
    blinking = (
        Blinking(len(emitters), cfg.on_frames, cfg.off_frames, seed=cfg.seed + 1)
        if cfg.blinking
        else None  # drift only: every emitter on in every frame
    )
    parts: list[tuple[np.ndarray, ...]] = []
    bar = tqdm(
        total=cfg.frames, desc="simulate", unit="frame", disable=None if cfg.progress else True
    )
    for t0 in range(0, cfg.frames, CHUNK_FRAMES):
        n = min(CHUNK_FRAMES, cfg.frames - t0)
        on = blinking.step(n) if blinking else np.ones((n, len(emitters)), bool)  # (n, E)
        ids, present = _padded_ids(on)
        xyz = sample_xyz[ids] + drift.at(np.arange(t0, t0 + n))[:, None, :]
        weights = sample_w[ids] * present
        batch = sim.render(
            torch.as_tensor(xyz, dtype=torch.float32),
            torch.as_tensor(weights, dtype=torch.float32),
            torch.as_tensor(present),
            drift=cfg.drift,
        )
        frames[t0 : t0 + n] = cast_frames(batch.frames.numpy(), frames.dtype)
        valid = batch.valid.numpy()
        b_idx = np.nonzero(valid)[0]
        parts.append((b_idx + t0, xyz[valid], weights[valid], ids[valid]))
        bar.update(n)
    bar.close()
    frame, xyz_all, weight, emitter = (np.concatenate([p[i] for p in parts]) for i in range(4))
    extra = {"weight": weight.astype(np.float64), "emitter": emitter.astype(np.float64)}
    truth = LocTable(frame.astype(np.int64), xyz_all, np.ones(len(frame)), extra)
    return truth, drift


def _padded_ids(on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, M)`` int64 ids of the emitters on in each of ``n`` frames (``on``: ``(n, E)``
    bool), padded with ``E``, and the ``(n, M)`` bool mask of the real ones."""
    counts = on.sum(axis=1)
    present = np.arange(max(int(counts.max(initial=0)), 1))[None, :] < counts[:, None]
    ids = np.full(present.shape, on.shape[1], np.int64)
    ids[present] = np.nonzero(on)[1]  # row-major: each frame's ids in order
    return ids, present


def _draw_sample(settings: SimSettings, cfg: SimStackConfig, drift: StageDrift) -> Emitters:
    """Emitters over the frame, its margin and where the drift brings them into view, at a
    density that puts ``cfg.molecules`` on per frame on average."""
    g = settings.geometry
    m_nm = settings.margin_px * g.px_nm
    path = drift.at(np.arange(cfg.frames))[:, :2]
    lo = (-m_nm - path.max(axis=0)).tolist()
    hi = (np.array([g.width, g.height]) * g.px_nm + m_nm - path.min(axis=0)).tolist()
    area_ratio = float(np.prod(np.subtract(hi, lo))) / (g.width * g.height * g.px_nm**2)
    duty = cfg.on_frames / (cfg.on_frames + cfg.off_frames) if cfg.blinking else 1.0
    count = round(cfg.molecules * area_ratio / duty)
    return draw_emitters(
        count,
        lo_nm=(lo[0], lo[1]),
        hi_nm=(hi[0], hi[1]),
        z_nm=cfg.z_nm or (0.0, g.depth_nm),
        weight_range=(settings.weight_min, settings.weight_max),
        structure=cfg.structure,
        seed=cfg.seed,
    )


def _drift_csv(drift: StageDrift) -> str:
    rows = np.column_stack([np.arange(1, drift.frames + 1), drift.at(np.arange(drift.frames))])
    lines = ["frame,x [nm],y [nm],z [nm]"]
    lines += [f"{int(r[0])},{r[1]:.4f},{r[2]:.4f},{r[3]:.4f}" for r in rows]
    return "\n".join(lines) + "\n"


def _write_tiff(path: Path, data: np.ndarray, settings: SimSettings, cfg: SimStackConfig) -> None:
    """ImageJ TIFF with px size (XResolution, um) and plane spacing (``spacing``, um)."""
    g = settings.geometry
    px_um = g.px_nm / 1000.0
    info = json.dumps(
        {
            "generated_by": "voxloc simulate",
            "seed": cfg.seed,
            "molecules_per_frame": cfg.molecules,
            "drift": cfg.drift,
            **(_sample_info(cfg) if cfg.fixed_sample else {}),
            "settings": settings.model_dump(mode="json"),
        }
    )
    axes = "TZYX" if data.ndim == 4 else "TYX"
    metadata: dict[str, str | float] = {"axes": axes, "unit": "um", "Info": info}
    if data.ndim == 4:
        metadata["spacing"] = g.dz_nm / 1000.0
    tifffile.imwrite(
        path, data, imagej=True, resolution=(1.0 / px_um, 1.0 / px_um), metadata=metadata
    )


def _sample_info(cfg: SimStackConfig) -> dict[str, object]:
    return {
        "blinking": cfg.blinking,
        "on_frames": cfg.on_frames,
        "off_frames": cfg.off_frames,
        "structure": cfg.structure,
        "z_nm": cfg.z_nm,
        "stage_drift_nm": [list(t) for t in cfg.stage_drift_nm],
    }
