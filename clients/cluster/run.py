"""``voxloc localize INPUT... --workers N | --scheduler ADDRESS`` on Dask distributed.

The client plans the job (which stacks, their frame counts from the TIFF headers, chunks
of whole batches, a manifest per output), submits one task per unfinished chunk and
writes each output in frame order as results arrive. Workers read their frames from the
shared filesystem and run :func:`engines.chunks.localize_chunk`; only localizations
come back. A worker that dies takes its task with it and the scheduler runs it again
elsewhere; a chunk's result is recorded once, so no frame is missing or doubled. An input
that cannot be read fails alone, named, and the others complete.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.cluster.assemble import OrderedOutput
from clients.cluster.inputs import InputStack, is_table_path, plan_inputs
from clients.cluster.manifest import Manifest, Span
from clients.cluster.progress import Progress
from engines.chunks import ChunkResult, ChunkTask, localize_chunk, plan_chunks
from engines.errors import FormatError, VoxlocError
from engines.io.stacks import open_stack
from engines.localize import LocalizeOptions, output_geometry, table_meta
from engines.modeldir import WEIGHTS, ModelInfo, read_info, resolve_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """How to run: a scheduler to join or a number of local workers, and the chunking."""

    scheduler: str | None = None
    workers: int | None = None
    chunk_frames: int = 256
    threads: int | None = None  # engine CPU threads per worker (None: backend default)
    retries: int = 2
    fresh: bool = False
    table_format: str = "csv"
    dashboard: str = ":8787"

    def __post_init__(self) -> None:
        if (self.scheduler is None) == (self.workers is None):
            raise ValueError("give either a scheduler address or a number of workers")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk frames must be >= 1, got {self.chunk_frames}")


@dataclass
class InputOutcome:
    """How one input ended: finished (``error`` None) or failed, with what was done."""

    stack: InputStack
    frames: int = 0
    chunks: int = 0
    chunks_run: int = 0
    chunks_resumed: int = 0
    localizations: int = 0
    up_to_date: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ClusterSummary:
    outcomes: list[InputOutcome]
    seconds: float
    frames_run: int
    workers: dict[str, str]  # worker host:pid -> engine label
    task_seconds: float = 0.0
    dashboard: str | None = None

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)


@dataclass
class _Job:
    """One input in flight: its chunks, its ordered output, its outcome."""

    outcome: InputOutcome
    spans: list[Span]
    output: OrderedOutput | None = None
    model: str = ""  # "name vVERSION" the client planned with
    futures: list[Any] = field(default_factory=list)


def localize_on_cluster(
    inputs: Sequence[str | Path],
    out: str | Path,
    opts: LocalizeOptions,
    copts: ClusterOptions,
    *,
    report: Callable[[str], None] = log.info,
) -> ClusterSummary:
    """Localize every input on a Dask cluster; see the module docstring.

    ``report`` gets the lines a user wants to see as they happen (the dashboard address).
    """
    t0 = time.perf_counter()
    model_dir = resolve_model(opts.model)  # unknown model: one clear error before a cluster
    info = read_info(model_dir)
    out = Path(out)
    stacks = plan_inputs(inputs, out, copts.table_format)
    if not is_table_path(out):
        out.mkdir(parents=True, exist_ok=True)
    model_id = _model_identity(model_dir, info)
    jobs = [_plan_job(s, opts, copts, info, model_id) for s in stacks]
    todo = [j for j in jobs if j.output is not None and not j.output.done]
    summary = ClusterSummary([j.outcome for j in jobs], 0.0, 0, {})
    if todo:
        with _cluster(copts) as client:
            summary.dashboard = _dashboard(client, copts.scheduler is None)
            report(f"Dask dashboard: {summary.dashboard or 'none'}")
            _run(client, todo, _model_reference(opts.model), opts, copts, summary)
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan_job(
    stack: InputStack,
    opts: LocalizeOptions,
    copts: ClusterOptions,
    info: ModelInfo,
    model_id: dict[str, Any],
) -> _Job:
    outcome = InputOutcome(stack)
    try:
        with open_stack(stack.sources, info.planes) as s:  # headers only, no pixels
            px_nm, dz_nm = output_geometry(info, opts)
            meta = table_meta(
                s,
                stack.sources,
                info,
                backend=opts.backend,
                threshold=opts.threshold,
                px_nm=px_nm,
                dz_nm=dz_nm,
                refine=opts.refine,
            )
            frames = s.frames
        spans = plan_chunks(frames, copts.chunk_frames, opts.batch)
        job = _job_identity(stack, opts, copts, model_id, frames, spans)
        manifest = Manifest.open(stack.output, job, spans, fresh=copts.fresh)
    except Exception as exc:  # noqa: BLE001 - this input fails, named; the others go on
        outcome.error = _describe_error(exc)
        log.error("%s: %s", stack.describe(), outcome.error)
        return _Job(outcome, [])
    outcome.frames, outcome.chunks = frames, len(spans)
    outcome.chunks_resumed = len(manifest.finished)
    outcome.up_to_date = manifest.up_to_date
    if outcome.up_to_date:
        outcome.localizations = sum(f.rows for f in manifest.finished.values())
    return _Job(outcome, spans, OrderedOutput(manifest, meta), f"{info.name} v{info.version}")


def _run(
    client: Any,
    jobs: list[_Job],
    model: str,
    opts: LocalizeOptions,
    copts: ClusterOptions,
    summary: ClusterSummary,
) -> None:
    from distributed import as_completed

    total = sum(j.outcome.frames for j in jobs)
    resumed = sum(j.outcome.frames - _frames_left(j) for j in jobs)
    progress = Progress(total, resumed, enabled=opts.progress)
    by_key: dict[str, tuple[_Job, Span]] = {}
    run_token = uuid.uuid4().hex[:8]
    try:
        for job in jobs:
            assert job.output is not None
            job.output.flush()  # chunks done by an earlier run: written at once
            _submit(client, job, model, opts, copts, by_key, run_token)
        for fut in as_completed([f for j in jobs for f in j.futures]):
            job, span = by_key.pop(fut.key)
            _collect(fut, job, span, progress, summary)
    finally:
        progress.close()
        for job in jobs:
            if job.output is not None and not job.output.done:
                job.output.abort()
                if job.outcome.ok:
                    job.outcome.error = "interrupted"
    summary.workers = dict(progress.workers)


def _submit(
    client: Any,
    job: _Job,
    model: str,
    opts: LocalizeOptions,
    copts: ClusterOptions,
    by_key: dict[str, tuple[_Job, Span]],
    run_token: str,
) -> None:
    assert job.output is not None
    sources = tuple(str(p.resolve()) for p in job.outcome.stack.sources)
    priority = -len(by_key)  # after the chunks of the inputs before this one
    for span in job.spans:
        if job.output.manifest.is_finished(span):
            continue
        priority -= 1
        task = ChunkTask(sources, span[0], span[1], model, opts, copts.threads)
        # one task group for every input (Dask groups by the key's leading words), so the
        # scheduler queues them all and hands them out in priority order
        key = f"voxloc-localize-{run_token}-{-priority}"
        # inputs in order, frames in order: each output fills from its start, streams out
        # and is complete early, and few outputs are open at once
        fut = client.submit(
            localize_chunk, task, key=key, pure=False, retries=copts.retries, priority=priority
        )
        by_key[fut.key] = (job, span)
        job.futures.append(fut)


def _collect(fut: Any, job: _Job, span: Span, progress: Progress, summary: ClusterSummary) -> None:
    if fut.status == "cancelled" or not job.outcome.ok:
        return
    try:
        res: ChunkResult = fut.result()
    except Exception as exc:  # retries used up, or the task killed its workers too often
        _fail(job, f"frames [{span[0]}, {span[1]}): {type(exc).__name__}: {exc}")
        return
    finally:
        fut.release()
    if res.error is None and res.model != job.model:
        res.error = (
            f"worker {res.worker} ran model {res.model}, the job was planned with "
            f"{job.model}: install the same model on every worker"
        )
    if res.error is not None:
        _fail(job, res.error)
        return
    assert job.output is not None
    try:
        job.output.add(span, res.rows, res.engine, res.worker)
    except OSError as exc:  # the output's disk: full, gone read-only, ...
        _fail(job, f"cannot write {job.output.output}: {exc}")
        return
    job.outcome.chunks_run += 1
    summary.frames_run += span[1] - span[0]
    summary.task_seconds += res.seconds
    progress.chunk_done(span[1] - span[0], res.worker, res.engine)
    if job.output.done:
        job.outcome.localizations = job.output.rows
        progress.note(f"{job.outcome.stack.describe()}: done -> {job.output.output}")


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, (VoxlocError, OSError)):
        return str(exc)
    # tifffile on a damaged file raises RuntimeError, ValueError, zlib.error, ...
    return f"damaged or unreadable file ({type(exc).__name__}: {exc})"


def _fail(job: _Job, message: str) -> None:
    job.outcome.error = message
    log.error("%s: %s", job.outcome.stack.describe(), message)
    for f in job.futures:
        f.cancel()
    if job.output is not None:
        job.output.abort()


def _frames_left(job: _Job) -> int:
    assert job.output is not None
    return sum(b - a for a, b in job.spans if not job.output.manifest.is_finished((a, b)))


@contextlib.contextmanager
def _cluster(copts: ClusterOptions) -> Iterator[Any]:
    """A client of the scheduler asked for, or of a local cluster started for this run."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise VoxlocError(
            "distributed runs need Dask distributed: pip install 'voxloc[cluster]'"
        ) from exc
    if copts.scheduler is not None:
        where = copts.scheduler
        # a path: the scheduler file `dask scheduler --scheduler-file` (or jobqueue) wrote
        kwargs = {"scheduler_file": where} if Path(where).is_file() else {"address": where}
        try:
            client = Client(timeout=60, **kwargs)
        except OSError as exc:
            raise VoxlocError(f"cannot reach the Dask scheduler {where}: {exc}") from exc
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=copts.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=copts.dashboard,
        ) as cluster,
        Client(cluster) as client,
    ):
        _exit_without_final_gc(client)
        yield client


def _exit_without_final_gc(client: Any) -> None:
    """Let this run's own worker processes end at once when the cluster closes.

    A process that imported torch can hang in the interpreter's final garbage collection;
    the nanny then waits 4 s and kills it. ``os._exit`` as the last exit handler skips
    that collection (the work is done and the results are back by then).
    """
    from distributed import WorkerPlugin

    class ExitWithoutFinalGC(WorkerPlugin):
        name = "voxloc-exit-without-final-gc"

        def setup(self, worker: Any) -> None:
            atexit.register(os._exit, 0)

    client.register_plugin(ExitWithoutFinalGC())


def _dashboard(client: Any, local: bool) -> str | None:
    if "dashboard" not in client.scheduler_info().get("services", {}):
        return None
    if local and importlib.util.find_spec("bokeh") is None:
        return f"{client.dashboard_link} (serves no pages without bokeh: pip install bokeh)"
    return client.dashboard_link


def _model_reference(model: str | Path) -> str:
    """How workers find the model: a directory by its absolute path (on the shared
    filesystem), a name by name (each worker's own search path: the shipped ``default``
    lives inside each worker's installation, wherever that is)."""
    return str(Path(model).resolve()) if Path(model).is_dir() else str(model)


def _model_identity(model_dir: Path, info: ModelInfo) -> dict[str, Any]:
    digest = hashlib.sha256((model_dir / WEIGHTS).read_bytes()).hexdigest()
    return {"name": info.name, "version": info.version, "weights_sha256": digest}


def _job_identity(
    stack: InputStack,
    opts: LocalizeOptions,
    copts: ClusterOptions,
    model_id: dict[str, Any],
    frames: int,
    spans: list[Span],
) -> dict[str, Any]:
    """What must match for an earlier run's chunks to be reused (JSON-able)."""
    files = []
    for p in stack.sources:
        st = p.stat()
        files.append({"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    if not spans:
        raise FormatError(f"{stack.describe()}: no frames")
    return {
        "inputs": files,
        "frames": frames,
        "chunk_frames": spans[0][1] - spans[0][0],
        "model": model_id,
        "backend": opts.backend,
        "device": opts.device,
        "precision": opts.precision,
        "threshold": float(opts.threshold),
        "batch": opts.batch,
        "px_nm": opts.px_nm,
        "dz_nm": opts.dz_nm,
        "format": stack.output.suffix.lower(),
        **({"refine": True} if opts.refine else {}),  # absent: manifests from before match
    }
