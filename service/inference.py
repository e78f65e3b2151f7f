"""Inference stage: the running engine and model swaps (Triton's semantics).

A new model is loaded and warmed up beside the running one (on the caller's thread),
then staged; the inference thread switches to it between two batches, so no frame set
is lost and every batch is served by exactly one model. A load that fails leaves the
running model untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import EngineError, ModelNotFoundError, VoxlocError
from engines.inference import Engine, create_engine
from engines.inference.registration import PlaneRegistration
from engines.inference.results import PendingResult
from engines.modeldir import read_info, resolve_model
from engines.types import Localizations
from service.stats import ServiceStats
from service.types import Batch, FrameSet

log = logging.getLogger(__name__)

SWITCH_WAIT_S = 30.0


class ModelBusyError(EngineError):
    """Another model load is in progress."""


@dataclass(frozen=True)
class LoadedModel:
    """An engine ready to serve, and what it is."""

    engine: Engine
    name: str
    version: str
    backend: str
    model_dir: Path

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "backend": self.backend,
            "dir": str(self.model_dir),
            "planes": self.engine.planes,
        }


class ModelManager:
    """Owns the active model; ``load`` stages a new one, ``current`` switches to it."""

    def __init__(
        self,
        *,
        backend: str,
        planes: int,
        height: int,
        width: int,
        warmup_batch: int,
        stats: ServiceStats,
        precision: str | None = None,
        raw_dtypes: tuple[str, ...] = ("uint16", "float32"),
    ) -> None:
        self.raw_dtypes = raw_dtypes
        self.backend = backend
        self.precision = precision
        self.planes, self.height, self.width = planes, height, width
        self.warmup_batch = warmup_batch
        self.stats = stats
        self._active: LoadedModel | None = None
        self._staged: LoadedModel | None = None
        self._switched = threading.Event()
        self._state_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.loading: str | None = None
        self.serving = False  # True while an inference thread calls current()

    @property
    def active(self) -> LoadedModel | None:
        return self._active

    def load(self, name: str) -> tuple[LoadedModel, LoadedModel | None]:
        """Load, warm up and switch to ``name``; returns (new, previous).

        Raises :class:`ModelNotFoundError`, :class:`ModelBusyError` or
        :class:`EngineError` (with the reason); the running model keeps serving.
        """
        if not self._load_lock.acquire(blocking=False):
            raise ModelBusyError(f"cannot load {name!r}: model {self.loading!r} is loading")
        try:
            self.loading = name
            try:
                new = self._build(name)
            except VoxlocError:
                self.stats.load_failed()
                raise
            return new, self._switch_to(new)
        finally:
            self.loading = None
            self._load_lock.release()

    def _build(self, name: str) -> LoadedModel:
        planes = read_info(resolve_model(name)).planes  # refuse before loading weights
        if planes != self.planes:
            raise EngineError(
                f"model {name!r} expects {planes} planes, the service streams {self.planes}"
            )
        try:
            engine = create_engine(name, self.backend, precision=self.precision)
        except (ModelNotFoundError, EngineError):
            raise
        except Exception as exc:  # backends raise their own types (ImportError, RuntimeError)
            raise EngineError(f"model {name!r} cannot be loaded: {exc}") from exc
        if engine.planes != self.planes:
            engine.close()
            raise EngineError(
                f"model {name!r} expects {engine.planes} planes, the service streams {self.planes}"
            )
        try:
            engine.warmup(self.height, self.width, self.warmup_batch)
            for dtype in self.raw_dtypes:  # the live path: raw frames, input stage on device
                blank = np.zeros((self.planes, self.height, self.width), dtype)
                engine.infer_raw([blank] * self.warmup_batch, _identity(self.planes), 0.99)
        except Exception as exc:
            engine.close()
            raise EngineError(f"model {name!r} failed its warm-up: {exc}") from exc
        info = engine.info
        log.info(
            "model %s (version %s, %s) loaded and warmed", info.name, info.version, engine.label
        )
        return LoadedModel(engine, info.name, info.version, engine.label, engine.model_dir)

    def _switch_to(self, new: LoadedModel) -> LoadedModel | None:
        previous = self._active
        if not self.serving:
            self._install(new)
            return previous
        with self._state_lock:
            self._switched.clear()
            self._staged = new
        if not self._switched.wait(SWITCH_WAIT_S):
            with self._state_lock:
                if self._staged is new:  # the inference thread is stuck: install directly
                    self._staged = None
                    self._install(new)
        return previous

    @property
    def switching(self) -> bool:
        """A loaded model waits for the inference thread to switch to it."""
        return self._staged is not None

    def current(self) -> LoadedModel | None:
        """The model for the next batch (switches to a staged one): inference thread only."""
        if self._staged is not None:
            with self._state_lock:
                if self._staged is not None:
                    self._install(self._staged)
                    self._staged = None
                    self._switched.set()
        return self._active

    def _install(self, new: LoadedModel) -> None:
        old, self._active = self._active, new
        self.stats.model_switched(new.name, new.version, new.backend, first=old is None)
        if old is not None and old.engine is not new.engine:
            log.info("switched model %s -> %s", old.name, new.name)
            old.engine.close()

    def close(self) -> None:
        if self._active is not None:
            self._active.engine.close()


@dataclass
class Submitted:
    """A batch handed to the engine (:func:`submit_batch`); :meth:`collect` its results."""

    batch: Batch
    model: LoadedModel
    threshold: float
    parts: list[tuple[list[FrameSet], PendingResult]]
    busy_s: float  # engine time so far (submission; collection adds to it)
    refine: bool = False  # positions refined (the service's refine setting)

    def collect(self) -> list[Localizations]:
        t0 = time.perf_counter()
        out: list[Localizations] = []
        for sets, pending in self.parts:
            out.extend(
                r if r.frame == fs.frame else replace(r, frame=fs.frame)  # the set's own
                for fs, r in zip(sets, pending.result(), strict=True)
            )
        self.busy_s += time.perf_counter() - t0
        return out


def submit_batch(
    model: LoadedModel, batch: Batch, threshold: float, *, refine: bool = False
) -> Submitted:
    """Hand ``batch`` to the engine (:meth:`~engines.inference.base.Engine.submit_raw`),
    its positions refined where ``refine`` is set.

    The raw sets go to the engine as they are (no stacking or conversion here), with the
    registration they carry; consecutive sets with another registration or dtype (an
    update, a camera of another dtype) make a call of their own. On an engine with an
    asynchronous hand-off (torch on CUDA) the copy to the device starts now and overlaps
    the compute of the batch collected next."""
    t0 = time.perf_counter()
    parts = []
    for sets in _runs_of_same_input(batch.sets):
        reg = sets[0].registration
        device_reg = reg.device if reg is not None else _identity(model.engine.planes)
        # numbered from the first set's frame: consecutive sets (the usual case) come back
        # with their own frame indices, so collect() renumbers only after a gap
        pending = model.engine.submit_raw(
            [fs.planes for fs in sets],
            device_reg,
            threshold,
            first_frame=sets[0].frame,
            refine=refine,
        )
        parts.append((sets, pending))
    return Submitted(batch, model, threshold, parts, time.perf_counter() - t0, refine)


def run_batch(
    model: LoadedModel, batch: Batch, threshold: float, *, refine: bool = False
) -> list[Localizations]:
    """Localizations of every frame set of ``batch``, carrying each set's frame index."""
    return submit_batch(model, batch, threshold, refine=refine).collect()


def _runs_of_same_input(sets: list[FrameSet]) -> list[list[FrameSet]]:
    runs: list[list[FrameSet]] = []
    for fs in sets:
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and last.registration is fs.registration
            and last.planes.dtype == fs.planes.dtype
        ):
            runs[-1].append(fs)
        else:
            runs.append([fs])
    return runs


_IDENTITY: dict[int, PlaneRegistration] = {}


def _identity(planes: int) -> PlaneRegistration:
    if planes not in _IDENTITY:
        _IDENTITY[planes] = PlaneRegistration.identity(planes)
    return _IDENTITY[planes]
