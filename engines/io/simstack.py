"""Simulated test stacks on disk (``voxloc simulate``): TIFF(s) plus a ground-truth CSV.

The stack is an ImageJ hyperstack ``TZYX`` with the pixel size and plane spacing in its
metadata, or with ``per_plane`` one single-camera TIFF per plane (``NAME_plane0.tif``,
...). The ground truth uses the localization CSV format (frame from 1, nm) with
confidence 1 and an extra ``weight`` column. Frames are simulated in chunks into a
temporary memory-mapped array, so long stacks do not need to fit in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from engines.cameras import cast_frames
from engines.config import SimSettings
from engines.io.atomic import discard, reserve_temp
from engines.io.loctable import LocTable, TableMeta, open_table_writer
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


@dataclass
class SimStackResult:
    stacks: list[Path]
    truth: Path
    molecules: int
    dtype: str
    shape: tuple[int, int, int, int]
    settings: SimSettings = field(repr=False, default_factory=SimSettings)


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
        truth = _simulate_into(frames, settings, cfg, psf)
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
        with open_table_writer(truth_path, meta, extra_columns=("weight",)) as writer:
            writer.write_table(truth)
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
