"""Streaming localization of a stack on disk (``voxloc localize``).

Frames are read in batches (memory-mapped or page by page), run through an inference
engine and appended to a CSV / HDF5 table that only appears under its final name when
the whole stack is done.

Geometry overrides: the network works on the voxel grid it was trained for (the model's
``px_nm`` / ``dz_nm``) and reports nm on that grid. ``px_nm`` / ``dz_nm`` here say what
one camera pixel / one plane spacing is in *your* sample; positions are rescaled from the
model's grid to yours (x, y by ``px_nm / model px_nm``, z by ``dz_nm / model dz_nm``).
This does not retrain anything: it is right when your PSF, measured in pixels and plane
spacings, looks like the model's (e.g. a different magnification with the same optics
ratio); otherwise train a model for your geometry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from engines.errors import FormatError, NonFiniteError
from engines.inference import Engine, create_engine
from engines.io.loctable import (
    TableMeta,
    TableWriter,
    model_meta,
    open_table_writer,
    table_format,
)
from engines.io.stacks import Stack, open_stack
from engines.modeldir import ModelInfo, resolve_model

log = logging.getLogger(__name__)

# columns after the standard ones: the photometry fit's goodness of fit (ThunderSTORM's
# name; Localizations.chi2), for filtering blends and neighbours out (docs/formats.md)
FIT_COLUMNS = ("chi2",)


class LocalizeOptions(BaseModel):
    """How :func:`localize_files` runs; ``px_nm`` / ``dz_nm`` None: the model's grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | Path = "default"
    backend: str = "auto"
    device: str | None = None
    precision: str | None = None  # None: the backend's default
    threshold: float = 0.5  # checked by the engine, which names the accepted range
    batch: int = Field(16, ge=1, description="frames per inference batch")
    px_nm: float | None = Field(None, gt=0, le=10_000)
    dz_nm: float | None = Field(None, gt=0, le=10_000)
    refine: bool = False  # Gauss-Newton refinement of the positions (Engine.refine)
    progress: bool = True


@dataclass
class LocalizeSummary:
    output: Path
    frames: int
    localizations: int
    seconds: float
    model: str
    model_version: str
    backend: str
    px_nm: float
    dz_nm: float


def localize_files(
    inputs: Sequence[str | Path], output: str | Path, opts: LocalizeOptions
) -> LocalizeSummary:
    """Localize a TIFF stack (or one TIFF per plane) into a CSV / HDF5 table."""
    output = Path(output)
    table_format(output)  # unknown extension: fail before loading anything
    input_paths = [Path(p) for p in inputs]
    if any(p.resolve() == output.resolve() for p in input_paths):
        raise FormatError(f"output {output} is also an input")
    model_dir = resolve_model(opts.model)  # unknown model: one clear error, before backends
    engine = create_engine(
        model_dir,
        opts.backend,
        threshold=opts.threshold,
        device=opts.device,
        precision=opts.precision,
    )
    engine.refine = opts.refine
    try:
        with open_stack(input_paths, engine.planes) as stack:
            log.info("input %s", stack.describe())
            px_nm, dz_nm = _output_geometry(engine, opts)
            meta = table_meta(
                stack,
                input_paths,
                engine.info,
                backend=engine.label,
                threshold=opts.threshold,
                px_nm=px_nm,
                dz_nm=dz_nm,
                refine=opts.refine,
            )
            t0 = time.perf_counter()
            with open_table_writer(output, meta, extra_columns=FIT_COLUMNS) as writer:
                localize_stack(engine, stack, writer, opts, px_nm=px_nm, dz_nm=dz_nm)
            seconds = time.perf_counter() - t0
            frames = stack.frames
    finally:
        engine.close()
    info = engine.info
    return LocalizeSummary(
        output, frames, writer.rows, seconds, info.name, info.version, engine.label, px_nm, dz_nm
    )


def localize_stack(
    engine: Engine,
    stack: Stack,
    writer: TableWriter,
    opts: LocalizeOptions,
    *,
    px_nm: float,
    dz_nm: float,
) -> None:
    """Stream every batch of ``stack`` through ``engine`` into ``writer``."""
    g = engine.info.settings.geometry
    scale = np.array([px_nm / g.px_nm, px_nm / g.px_nm, dz_nm / g.dz_nm], np.float32)
    bar = tqdm(
        total=stack.frames,
        desc="localize",
        unit="frame",
        dynamic_ncols=True,
        disable=None if opts.progress else True,
        mininterval=0.5,
    )
    try:
        for first, frames in stack.batches(opts.batch):
            try:
                locs = engine.infer(frames, opts.threshold, first_frame=first)
            except NonFiniteError as exc:  # name the frame in the stack, counting from 0
                raise FormatError(
                    f"{stack.describe()}: frame {first + exc.frame} (counting from 0) "
                    f"has {exc.count} NaN/inf pixels"
                ) from exc
            if not np.all(scale == 1):  # positions and their precision on the output grid
                locs = [
                    replace(loc, xyz_nm=loc.xyz_nm * scale, precision_nm=loc.precision_nm * scale)
                    for loc in locs
                ]
            chi2 = [loc.chi2 for loc in locs]
            writer.write(locs, {"chi2": np.concatenate(chi2) if chi2 else np.zeros(0)})
            bar.update(frames.shape[0])
            bar.set_postfix(locs=writer.rows, refresh=False)
    finally:
        bar.close()


def output_geometry(info: ModelInfo, opts: LocalizeOptions) -> tuple[float, float]:
    """Pixel size and plane spacing of the output, nm: the options', else the model's."""
    g = info.settings.geometry
    px_nm = opts.px_nm if opts.px_nm is not None else g.px_nm
    dz_nm = opts.dz_nm if opts.dz_nm is not None else g.dz_nm
    return px_nm, dz_nm


def _output_geometry(engine: Engine, opts: LocalizeOptions) -> tuple[float, float]:
    g = engine.info.settings.geometry
    px_nm, dz_nm = output_geometry(engine.info, opts)
    if (px_nm, dz_nm) != (g.px_nm, g.dz_nm):
        log.info(
            "rescaling positions from the model's grid (%.4g nm px, %.4g nm planes) to "
            "%.4g nm px, %.4g nm planes",
            g.px_nm,
            g.dz_nm,
            px_nm,
            dz_nm,
        )
    return px_nm, dz_nm


def table_meta(
    stack: Stack,
    sources: Sequence[str | Path],
    info: ModelInfo,
    *,
    backend: str,
    threshold: float,
    px_nm: float,
    dz_nm: float,
    refine: bool = False,
) -> TableMeta:
    """The table header of ``voxloc localize`` (local or on a cluster) for ``stack``."""
    refined = {"Refined": "photometry Gauss-Newton steps"} if refine else {}
    return TableMeta(
        frames=stack.frames,
        height=stack.height,
        width=stack.width,
        px_nm=px_nm,
        dz_nm=dz_nm,
        planes=stack.planes,
        generated_by="voxloc localize",
        source=", ".join(str(p) for p in sources),
        data_type=str(stack.dtype),
        info={
            "Model": info.name,
            "Model version": info.version,
            "Backend": backend,
            "Threshold": float(threshold),
            **refined,
        },
        **model_meta(info.settings, px_nm=px_nm, dz_nm=dz_nm),
    )
