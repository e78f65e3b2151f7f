"""The evaluation protocol (paper Sec. 4.2, Table 4, Figs. 7-8) on simulated test frames.

Frames come from :class:`~engines.simulator.Simulator` with the model's own settings and
``margin_px = 0`` (every molecule lies inside the frame, exactly ``molecules`` per frame).
One pass per batch runs the torch network (voxel confusion matrix against
``SimBatch.targets``) and the inference engine of the chosen backend (molecule metrics);
localizations at the lowest threshold are filtered by confidence for the higher ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.config import SimSettings
from engines.evaluate.depth import DepthStats
from engines.evaluate.matching import Matching, match_localizations
from engines.evaluate.metrics import VoxelConfusion, voxel_confusion
from engines.evaluate.photometry import PhotometryStats, raw_crlb
from engines.geometry import REFERENCE_AREA_PX
from engines.inference import Engine, create_engine
from engines.modeldir import ModelInfo, load_model
from engines.network import VoxelNet
from engines.psf_model import PSFModel
from engines.simulator import Simulator

log = logging.getLogger(__name__)


class EvalConfig(BaseModel):
    """What ``voxloc evaluate`` runs; ``molecules`` and ``densities`` are per 64x64 area."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | Path = "default"
    frames: int = Field(500, ge=1)
    molecules: int = Field(50, ge=1)
    size: int = Field(64, ge=16, le=4096, description="frame height and width, px")
    seed: int = 0
    thresholds: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...] = Field(
        (0.5, 0.9), min_length=1, description="kept sorted, without repeats"
    )
    backend: str = "auto"
    precision: str | None = None  # None: the backend's default
    low_density_molecules: int = Field(10, ge=1)
    low_density_frames: int = Field(200, ge=0)
    densities: tuple[Annotated[int, Field(ge=1)], ...] = (5, 10, 25, 50, 100, 150)
    sweep_frames: int = Field(100, ge=0)
    crlb_samples: int = Field(500, ge=1)
    batch_frames: int = Field(50, ge=1)  # per 64x64 area; fewer per batch for larger sizes
    # test frames from this PSF ("vectorial", a spline .npz) instead of the model's own
    test_psf: str | None = None
    refine: bool = False  # the engine refines the positions (voxloc localize --refine)

    @field_validator("thresholds")
    @classmethod
    def _sorted(cls, thresholds: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(sorted(set(thresholds)))

    def per_frame(self, molecules_per_64: int) -> int:
        """Molecules per frame of ``size x size`` at the density of ``molecules_per_64``."""
        return max(1, round(molecules_per_64 * self.size * self.size / REFERENCE_AREA_PX))

    @property
    def batch(self) -> int:
        return max(1, self.batch_frames * REFERENCE_AREA_PX // (self.size * self.size))


@dataclass
class SetResult:
    """Pooled results of one test set, per threshold."""

    frames: int
    molecules_per_frame: int
    drift: bool
    voxel: dict[float, VoxelConfusion] = field(default_factory=dict)
    matching: dict[float, Matching] = field(default_factory=dict)
    seconds: float = 0.0
    depth: dict[float, DepthStats] = field(default_factory=dict)
    photometry: PhotometryStats | None = None  # matched at the lowest threshold


class Evaluator:
    """Holds the model (torch net + engine) and runs test sets through it."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.engine: Engine = create_engine(
            cfg.model, cfg.backend, threshold=cfg.thresholds[0], precision=cfg.precision
        )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        net, info = load_model(self.engine.model_dir, device=self.device)
        self.net: VoxelNet = net
        self.info: ModelInfo = info
        self.settings: SimSettings = info.settings.model_copy(update={"margin_px": 0})
        self.frames_psf: PSFModel | None = test_psf_model(cfg.test_psf, self.settings)
        self.engine.refine = cfg.refine

    def close(self) -> None:
        self.engine.close()

    @property
    def model_dir(self) -> Path:
        return self.engine.model_dir

    def run_set(
        self,
        *,
        frames: int,
        molecules: int | tuple[int, int],
        seed: int,
        drift: bool,
        voxels: bool = True,
    ) -> SetResult:
        """Simulate ``frames`` frames of ``size x size`` with ``molecules`` each (or a
        range); score them (``voxels``: also the voxel confusion matrix of the torch net)."""
        cfg = self.cfg
        taus = cfg.thresholds
        sim = Simulator(self.settings, seed=seed, psf=self.frames_psf)
        per_frame = molecules if isinstance(molecules, int) else max(molecules)
        result = SetResult(frames, per_frame, drift, {t: VoxelConfusion() for t in taus})
        depth = self.settings.geometry.depth_nm
        result.depth = {t: DepthStats(depth) for t in taus}
        fit = self.engine.photometry
        result.photometry = PhotometryStats(self.settings, fit.side, self.frames_psf)
        parts: dict[float, list[Matching]] = {t: [] for t in taus}
        t0 = time.perf_counter()
        for start in range(0, frames, cfg.batch):
            n = min(cfg.batch, frames - start)
            batch = sim.sample(n, molecules, height=cfg.size, width=cfg.size, drift=drift)
            if voxels:
                with torch.inference_mode():
                    conf = self.net(batch.frames.to(self.device))[:, :, 0].cpu()
                labels = batch.targets[:, :, 0]
                for t in taus:
                    result.voxel[t].add(voxel_confusion(conf, labels, t))
            locs = self.engine.infer(batch.frames.numpy(), threshold=taus[0], first_frame=start)
            bounds = raw_crlb(fit, batch.frames, locs, shifts=cfg.refine)
            for b, loc in enumerate(locs):
                truth = batch.molecules(b).numpy()
                weights = batch.weights[b][batch.valid[b]].numpy()
                for t in taus:
                    keep = loc.confidence > t
                    m = match_localizations(loc.xyz_nm[keep], truth)
                    parts[t].append(m)
                    result.depth[t].add(truth[:, 2], truth[m.true_idx, 2], m.delta_nm[:, 2])
                    if t == taus[0]:  # keep is all True: indices are loc's own
                        result.photometry.add(loc, m, truth, weights, bounds[b])
        result.matching = {t: Matching.concat(parts[t]) for t in taus}
        result.seconds = time.perf_counter() - t0
        log.info(
            "evaluated %d frames with %s molecules each (drift %s) in %.1f s",
            frames,
            molecules,
            "on" if drift else "off",
            result.seconds,
        )
        return result

    def density_um3(self, molecules: int) -> float:
        """Molecules per cubic micrometre of the imaged volume of one frame."""
        g = self.settings.geometry
        side_um = self.cfg.size * g.px_nm / 1000.0
        return molecules / (side_um * side_um * g.depth_nm / 1000.0)


def seeds(seed: int) -> dict[str, int]:
    """Independent seeds of the test sets, so each set is reproducible on its own."""
    return {"main": seed, "low_density": seed + 1, "crlb": seed + 2, "sweep": seed + 3}


def sweep(ev: Evaluator) -> list[tuple[int, SetResult]]:
    """Density sweep (Fig. 7): one set per density, drift on."""
    cfg = ev.cfg
    if cfg.sweep_frames == 0:
        return []
    base = seeds(cfg.seed)["sweep"]
    return [
        (
            d,
            ev.run_set(
                frames=cfg.sweep_frames,
                molecules=cfg.per_frame(d),
                seed=base + 1000 * i,
                drift=True,
            ),
        )
        for i, d in enumerate(sorted(set(cfg.densities)))
    ]


def test_psf_model(name: str | None, settings: SimSettings) -> PSFModel | None:
    """The PSF test frames are drawn from: None (the model's own), ``vectorial`` (the
    psfmodels microscope of :mod:`engines.vectorial`) or a spline PSF file."""
    if name is None:
        return None
    if name == "vectorial":
        from engines.vectorial import VectorialPSF

        return VectorialPSF(settings)
    from engines.psf_model import psf_model_for, spline_ref

    psf = settings.psf.model_copy(update={"spline": spline_ref(name)})
    return psf_model_for(settings.model_copy(update={"psf": psf}))
