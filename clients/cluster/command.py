"""The ``--workers`` / ``--scheduler`` options of ``voxloc localize`` and their report."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engines.localize import LocalizeOptions

EXIT_SOME_FAILED = 1


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "distributed (Dask; docs/cluster.md): many inputs, split into chunks of frames"
    )
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="start a local Dask cluster of N worker processes (1 thread each)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="join a running Dask scheduler (tcp://host:8786 or a scheduler JSON file)",
    )
    g.add_argument(
        "--chunk-frames",
        type=int,
        default=256,
        help="frames per task, rounded up to whole batches (default 256)",
    )
    g.add_argument(
        "--format",
        choices=["csv", "h5", "smlm"],
        default="csv",
        help="table format when -o names a folder: <input stem>.csv, .h5 or .smlm (default csv)",
    )
    g.add_argument(
        "--engine-threads",
        type=int,
        default=None,
        metavar="T",
        help="CPU threads of each worker's engine (default: 1 per worker with --workers, "
        "the backend's default with --scheduler)",
    )
    g.add_argument("--retries", type=int, default=2, help="re-runs of a failed task (2)")
    g.add_argument(
        "--fresh",
        action="store_true",
        help="ignore the manifests of earlier runs and redo every chunk",
    )
    g.add_argument(
        "--dashboard",
        default=":8787",
        metavar="ADDRESS",
        help="dashboard address of a cluster started with --workers (default :8787)",
    )


def cluster_requested(args: argparse.Namespace) -> bool:
    return getattr(args, "workers", None) is not None or bool(getattr(args, "scheduler", None))


def run_cluster_command(args: argparse.Namespace, opts: LocalizeOptions) -> int:
    """Run ``voxloc localize`` on Dask and print one line per input; exit 1 if any failed."""
    from clients.cluster.run import ClusterOptions, localize_on_cluster

    _quiet_dask()
    threads = args.engine_threads
    if threads is None and args.workers is not None:
        threads = 1
    copts = ClusterOptions(
        scheduler=args.scheduler,
        workers=args.workers,
        chunk_frames=args.chunk_frames,
        threads=threads,
        retries=args.retries,
        fresh=args.fresh,
        table_format=args.format,
        dashboard=args.dashboard,
    )
    with _sigterm_as_interrupt():  # scancel, kubectl delete: clean up as for Ctrl-C
        summary = localize_on_cluster(
            args.inputs, args.out, opts, copts, report=lambda line: print(line, flush=True)
        )
    for o in summary.outcomes:
        if not o.ok:
            print(f"FAILED {o.stack.describe()}: {o.error}")
        elif o.up_to_date:
            print(f"{o.stack.describe()}: up to date -> {o.stack.output}")
        else:
            print(
                f"{o.stack.describe()}: {o.localizations} localizations in {o.frames} frames "
                f"-> {o.stack.output} ({o.chunks_run} chunks run, {o.chunks_resumed} resumed)"
            )
    finished = sum(o.ok for o in summary.outcomes)
    rate = summary.frames_run / summary.seconds if summary.seconds > 0 else 0.0
    engines = ", ".join(f"{w} {label}" for w, label in sorted(summary.workers.items()))
    print(
        f"{finished} of {len(summary.outcomes)} inputs finished in {summary.seconds:.1f} s "
        f"({summary.frames_run} frames run, {rate:.1f} frames/s"
        + (f"; workers: {engines})" if engines else ")")
    )
    return 0 if summary.ok else EXIT_SOME_FAILED


def _quiet_dask() -> None:
    """Dask's INFO lines (every worker start and stop) only with ``voxloc -v``."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # for worker processes
    logging.getLogger("distributed").setLevel(logging.WARNING)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt: temp files go, parts and manifests stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
