"""Localization of one frame range of a stack: the unit of work of a distributed run.

The worker side of ``voxloc localize --workers/--scheduler`` (``clients/cluster.py``),
with no Dask in it: a task names its stack by path and a frame range, the worker process
reads those frames itself and runs them through the same code as a local run
(:func:`engines.localize.localize_stack`), so only localizations travel back.

Each worker process keeps its engine (one model load per process, keyed by what builds
it) and its last opened stacks. Chunks start on multiples of the batch size and hold a
whole number of batches (except the stack's last one): the engine then sees exactly the
batches a local run feeds it, which matters because reduced-precision arithmetic (bf16 on
a CPU) gives results that depend on how frames are batched.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.errors import FormatError, VoxlocError
from engines.inference import Engine, create_engine
from engines.io.loctable import LocTable
from engines.io.stacks import Stack, open_stack
from engines.localize import FIT_COLUMNS, LocalizeOptions, localize_stack
from engines.types import LOC_COLUMNS, Localizations

log = logging.getLogger(__name__)

ENGINES_KEPT = 2  # engines per process (a job uses one; two covers a model switch)
STACKS_KEPT = 4  # open stacks per process (a worker moves on through few inputs at once)


@dataclass(frozen=True)
class ChunkTask:
    """One task: localize frames ``[first, stop)`` of the stack made of ``sources``.

    ``sources`` is one multi-plane TIFF or one TIFF per plane (absolute paths on the
    shared filesystem); ``model`` is a model name or directory; ``threads`` caps the
    engine's CPU threads (None: the backend's default).
    """

    sources: tuple[str, ...]
    first: int
    stop: int
    model: str
    opts: LocalizeOptions
    threads: int | None = None

    @property
    def frames(self) -> int:
        return self.stop - self.first


@dataclass
class ChunkResult:
    """What a task sends back: the localizations of its frames, or why it could not.

    Attributes:
        rows: ``(N, 11)`` float64 rows: ``LOC_COLUMNS`` then ``FIT_COLUMNS`` (the fit's
            chi2), frame counting from 0, ordered by frame; empty when ``error`` is set.
        engine: the engine's label (``torch/cpu/bf16``), "" if none was built.
        model: ``name vVERSION`` of the model the engine runs, "" if none was built.
        worker: ``host:pid`` of the process that ran the task.
        seconds: time spent in the task, s.
        error: the message of a deterministic failure (bad file), else None.
    """

    first: int
    stop: int
    rows: np.ndarray
    engine: str
    model: str
    worker: str
    seconds: float
    error: str | None = None


def plan_chunks(frames: int, chunk_frames: int, batch: int) -> list[tuple[int, int]]:
    """Frame ranges ``[first, stop)`` covering ``frames``, each a whole number of batches."""
    if frames < 1 or chunk_frames < 1 or batch < 1:
        raise ValueError(
            f"expected frames, chunk_frames, batch >= 1, got {frames}, {chunk_frames}, {batch}"
        )
    size = -(-chunk_frames // batch) * batch  # round up to a multiple of the batch
    return [(t0, min(t0 + size, frames)) for t0 in range(0, frames, size)]


def localize_chunk(task: ChunkTask) -> ChunkResult:
    """Run one task in this process (the function a Dask worker executes)."""
    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    label = model = ""
    try:
        engine = cached_engine(task)
        label, model = engine.label, f"{engine.info.name} v{engine.info.version}"
        stack = _cached_stack(task.sources, engine.planes)
        rows = _localize_range(engine, stack, task)
    except VoxlocError as exc:  # a bad file or model: retrying elsewhere will not help
        log.warning("chunk [%d, %d) of %s failed: %s", task.first, task.stop, task.sources, exc)
        dt = time.perf_counter() - t0
        empty = np.zeros((0, CHUNK_COLUMNS))
        return ChunkResult(task.first, task.stop, empty, label, model, worker, dt, str(exc))
    dt = time.perf_counter() - t0
    return ChunkResult(task.first, task.stop, rows, label, model, worker, dt)


def _localize_range(engine: Engine, stack: Stack, task: ChunkTask) -> np.ndarray:
    if not 0 <= task.first < task.stop <= stack.frames:
        raise VoxlocError(
            f"{stack.describe()}: frames [{task.first}, {task.stop}) asked for, the stack "
            f"has {stack.frames} (did the file change since the job was planned?)"
        )
    g = engine.info.settings.geometry
    opts = task.opts.model_copy(update={"progress": False})
    px_nm = opts.px_nm if opts.px_nm is not None else g.px_nm
    dz_nm = opts.dz_nm if opts.dz_nm is not None else g.dz_nm
    frames = _FrameRange(stack, task.first, task.stop)
    rows = _Rows()
    # duck-typed Stack and TableWriter: the very code path of a local run
    localize_stack(engine, frames, rows, opts, px_nm=px_nm, dz_nm=dz_nm)  # type: ignore[arg-type]
    return rows.array()


class _FrameRange:
    """Frames ``[first, stop)`` of a stack, read in batches from ``first`` (a Stack view)."""

    def __init__(self, stack: Stack, first: int, stop: int) -> None:
        self.stack, self.first, self.stop = stack, first, stop
        self.frames = stop - first

    def batches(self, batch: int) -> Iterator[tuple[int, np.ndarray]]:
        for t0 in range(self.first, self.stop, batch):
            t1 = min(t0 + batch, self.stop)
            with _corrupt_as_format_error(f"{self.stack.describe()}: frames [{t0}, {t1})"):
                frames = self.stack.read(t0, t1)
            yield t0, frames

    def describe(self) -> str:
        return self.stack.describe()


class _Rows:
    """Collects what :func:`localize_stack` writes, as the table writers would get it."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.rows = 0

    def write(self, locs: Sequence[Localizations], extra: object = None) -> None:
        """The rows of ``locs`` with their chi2 (``extra``, the writer's columns, is the
        same chi2: taken from the localizations here)."""
        for loc in locs:
            if len(loc):
                self.parts.append(np.column_stack([loc.to_array(), loc.chi2]))
                self.rows += len(loc)

    def array(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, CHUNK_COLUMNS))


CHUNK_COLUMNS = len(LOC_COLUMNS) + len(FIT_COLUMNS)


def chunk_table(rows: np.ndarray) -> LocTable:
    """The table of a chunk's rows: ``CHUNK_COLUMNS`` wide, or the ``LOC_COLUMNS`` (or
    legacy 5) of a chunk finished before the chi2 column (chi2 then NaN)."""
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2:
        return LocTable.from_rows(rows)  # its ValueError names the shape
    width = len(LOC_COLUMNS)
    chi2 = rows[:, width] if rows.shape[1] == CHUNK_COLUMNS else np.full(len(rows), np.nan)
    return LocTable.from_rows(rows[:, :width] if rows.shape[1] > width else rows, {"chi2": chi2})


_lock = threading.Lock()
_engines: OrderedDict[tuple, Engine] = OrderedDict()
_stacks: OrderedDict[tuple, Stack] = OrderedDict()


def engine_key(task: ChunkTask) -> tuple:
    o = task.opts
    return (task.model, o.backend, o.device, o.precision, o.threshold, o.refine, task.threads)


def cached_engine(task: ChunkTask) -> Engine:
    """This process's engine for ``task`` (built on first use, then reused)."""
    key = engine_key(task)
    with _lock:
        if key in _engines:
            _engines.move_to_end(key)
            return _engines[key]
        if not _engines:
            undo_malloc_trim_threshold()
        o = task.opts
        options: dict[str, int] = {} if task.threads is None else {"threads": task.threads}
        engine = create_engine(
            task.model,
            o.backend,
            threshold=o.threshold,
            device=o.device,
            precision=o.precision,
            **options,
        )
        engine.refine = o.refine
        log.info("worker %d: engine %s for model %s", os.getpid(), engine.label, task.model)
        _engines[key] = engine
        while len(_engines) > ENGINES_KEPT:
            _engines.popitem(last=False)[1].close()
        return engine


def undo_malloc_trim_threshold() -> bool:
    """Give glibc's allocator its large-block thresholds back in a Dask worker process.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed
    memory back to the OS). Setting it also pins glibc's mmap threshold at 128 kB, so every
    activation buffer of every batch is mmap'ed and unmapped again, and the engine runs
    17-50 % slower (measured with a 1-thread bf16 engine, 64x64x4 frames). Raising both
    thresholds (mmap 32 MB, trim 64 MB) restores the speed of a normal process; a worker
    keeps at most 64 MB of freed heap. True if the thresholds were changed.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): the variable meant nothing there
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc malloc.h
    done = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
    done = libc.mallopt(m_trim_threshold, 64 << 20) == 1 and done
    log.info("worker %d: glibc mmap / trim thresholds raised: %s", os.getpid(), done)
    return done


def _cached_stack(sources: tuple[str, ...], planes: int) -> Stack:
    """An open stack, reused while its files keep their size and modification time."""
    stats = tuple((os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in sources if Path(p).exists())
    key = (sources, planes, stats)
    with _lock:
        if key in _stacks:
            _stacks.move_to_end(key)
            return _stacks[key]
    with _corrupt_as_format_error(", ".join(sources)):
        stack = open_stack([Path(p) for p in sources], planes)
    with _lock:
        _stacks[key] = stack
        while len(_stacks) > STACKS_KEPT:
            _stacks.popitem(last=False)[1].close()
    return stack


@contextlib.contextmanager
def _corrupt_as_format_error(what: str) -> Iterator[None]:
    """A decoder's error (zlib, tifffile) means a damaged file: no use retrying.

    OSError stays as it is: on a network filesystem it may pass, and Dask retries it.
    """
    try:
        yield
    except (VoxlocError, OSError):
        raise
    except Exception as exc:
        raise FormatError(f"{what}: damaged file ({type(exc).__name__}: {exc})") from exc


def clear_caches() -> None:
    """Close this process's engines and stacks (tests, worker shutdown)."""
    with _lock:
        while _engines:
            _engines.popitem()[1].close()
        while _stacks:
            _stacks.popitem()[1].close()
