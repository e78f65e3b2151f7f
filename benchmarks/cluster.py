"""Distributed localization benchmark: 1 and 2 single-threaded Dask workers, same stacks.

Simulates a few stacks, then times ``voxloc localize --scheduler`` (the library call behind
it, :func:`clients.cluster.localize_on_cluster`) on a ``LocalCluster`` of 1 and of 2
worker processes, each with 1 Dask thread and a 1-thread engine, round-robin over
``--repeats`` rounds so a load change on the machine hits all alike. Beside them, as the
control that says what the machine itself gives: the same stacks in 1 local process and
shared over 2 plain local processes (a multiprocessing pool, no Dask), 1-thread engines.
Every process builds its engine in a warm-up before the timing (the cluster's is
reported apart). Reported: frames/s, the scaling ratio 2 workers / 1 worker and the
plain 2 / 1 processes ratio per round, and the scheduler overhead per task, measured two
ways: the round trip of no-op tasks, and the worker time per chunk not spent in the chunk
itself ((wall x workers - task seconds) / tasks).

    python benchmarks/cluster.py                      # 4 stacks x 200 frames of 64x64x4
    python benchmarks/cluster.py --stacks 2 --frames 64 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would shadow
# the `engines` package
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from distributed import Client, LocalCluster  # noqa: E402

from clients.cluster import ClusterOptions, localize_on_cluster  # noqa: E402
from engines.chunks import ChunkTask, localize_chunk  # noqa: E402
from engines.localize import LocalizeOptions  # noqa: E402
from engines.modeldir import resolve_model  # noqa: E402

log = logging.getLogger("benchmarks.cluster")


@dataclass
class Row:
    setup: str
    round: int
    frames: int
    seconds: float
    frames_per_s: float
    tasks: int = 0
    task_seconds: float = 0.0
    idle_ms_per_task: float | None = None
    noop_ms_per_task: float | None = None
    warmup_s: float | None = None


def simulate(folder: Path, stacks: int, frames: int, size: int) -> list[Path]:
    from engines.config import SimSettings
    from engines.io.simstack import SimStackConfig, simulate_stack

    base = SimSettings()
    settings = base.model_copy(update={"geometry": base.geometry.with_size(size, size)})
    paths = []
    for k in range(stacks):
        cfg = SimStackConfig(frames=frames, molecules=50, seed=k, progress=False)
        res = simulate_stack(folder / f"stack{k}.tif", settings, cfg)
        res.truth.unlink()
        paths.extend(res.stacks)
    return paths


def _noop(x: int) -> int:
    return x


def noop_ms_per_task(client: Client, tasks: int = 200) -> float:
    """Round trip of ``tasks`` no-op tasks through the scheduler, ms per task."""
    client.gather(client.map(_noop, range(10), pure=False))  # connections up
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(tasks), pure=False))
    return (time.perf_counter() - t0) / tasks * 1e3


def warm_up(client: Client, stack: Path, opts: LocalizeOptions, model: str) -> float:
    """Build each worker's engine on one batch; seconds it took (the slowest worker)."""
    task = ChunkTask((str(stack.resolve()),), 0, opts.batch, model, opts, threads=1)
    t0 = time.perf_counter()
    for addr in client.scheduler_info()["workers"]:
        client.submit(localize_chunk, task, workers=[addr], pure=False).result()
    return time.perf_counter() - t0


def run_cluster(
    client: Client, workers: int, inputs: list[Path], out: Path, opts: LocalizeOptions, chunk: int
) -> Row:
    copts = ClusterOptions(
        scheduler=client.scheduler.address, chunk_frames=chunk, threads=1, fresh=True
    )
    s = localize_on_cluster(inputs, out, opts, copts)
    assert s.ok, [o.error for o in s.outcomes]
    tasks = sum(o.chunks_run for o in s.outcomes)
    idle = (s.seconds * workers - s.task_seconds) / tasks * 1e3
    return Row(
        f"cluster, {workers} worker{'s' if workers > 1 else ''}",
        0,
        s.frames_run,
        s.seconds,
        s.frames_run / s.seconds,
        tasks,
        s.task_seconds,
        idle,
    )


_engine = None  # one engine per local process (the parent, or a pool process)


def _local_engine(model: str):
    global _engine
    if _engine is None:
        import torch

        from engines.inference import create_engine

        torch.set_num_threads(1)
        _engine = create_engine(model, "auto", threads=1)
    return _engine


def _localize_file(path: Path, out: Path, opts: LocalizeOptions) -> int:
    """One stack with this process's engine, as ``voxloc localize`` does; frames."""
    from engines.io.loctable import TableMeta, open_table_writer
    from engines.io.stacks import open_stack
    from engines.localize import localize_stack

    engine = _local_engine(opts.model)
    g = engine.info.settings.geometry
    with open_stack([path], engine.planes) as stack:
        meta = TableMeta(stack.frames, stack.height, stack.width, g.px_nm, g.dz_nm, stack.planes)
        with open_table_writer(out / f"{path.stem}.csv", meta) as writer:
            localize_stack(engine, stack, writer, opts, px_nm=g.px_nm, dz_nm=g.dz_nm)
        return stack.frames


def _pool_ready(model: str) -> int:
    _local_engine(model)
    time.sleep(0.5)  # so that every pool process takes one of these
    return os.getpid()


def run_local(inputs: list[Path], out: Path, opts: LocalizeOptions, pool=None) -> Row:
    """All stacks in this process, or shared over a pool of processes (no Dask)."""
    t0 = time.perf_counter()
    if pool is None:
        frames = sum(_localize_file(p, out, opts) for p in inputs)
        setup = "local, 1 process"
    else:
        frames = sum(pool.starmap(_localize_file, [(p, out, opts) for p in inputs], chunksize=1))
        setup = "local, 2 processes (no Dask)"
    dt = time.perf_counter() - t0
    return Row(setup, 0, frames, dt, frames / dt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stacks", type=int, default=4)
    p.add_argument("--frames", type=int, default=200, help="frames per stack")
    p.add_argument("--size", type=int, default=64, help="frame height and width, px")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--chunk-frames", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="round-robin rounds")
    p.add_argument("--model", default="default")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/cluster.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"
    model = str(resolve_model(args.model))
    load_at_start = os.getloadavg()
    opts = LocalizeOptions(model=model, batch=args.batch, progress=False)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="voxloc-bench-cluster-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        inputs = simulate(root / "in", args.stacks, args.frames, args.size)
        clusters = {n: _start(n) for n in (1, 2)}
        pool = multiprocessing.get_context("spawn").Pool(2)
        try:
            for n, (_, client) in clusters.items():
                warm = warm_up(client, inputs[0], opts, model)
                noop = noop_ms_per_task(client)
                rows.append(Row(f"warm-up, {n} worker(s)", 0, 0, warm, 0.0, warmup_s=warm))
                rows[-1].noop_ms_per_task = noop
            _local_engine(model)
            pids: set[int] = set()
            while len(pids) < 2:  # until both pool processes have built their engine
                pids |= set(pool.map(_pool_ready, [model, model], chunksize=1))
            for r in range(1, args.repeats + 1):
                for k, pl in enumerate((None, pool)):
                    row = run_local(inputs, _fresh(root / f"local{k}-{r}"), opts, pl)
                    row.round = r
                    rows.append(row)
                for n, (_, client) in clusters.items():
                    out = _fresh(root / f"w{n}-{r}")
                    row = run_cluster(client, n, inputs, out, opts, args.chunk_frames)
                    row.round = r
                    row.noop_ms_per_task = next(
                        x.noop_ms_per_task for x in rows if x.setup == f"warm-up, {n} worker(s)"
                    )
                    rows.append(row)
        finally:
            pool.terminate()
            for cluster, client in clusters.values():
                client.close()
                cluster.close()
    report(rows, args, load_at_start)
    return 0


def _start(workers: int) -> tuple[LocalCluster, Client]:
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    return cluster, Client(cluster)


def _fresh(folder: Path) -> Path:
    folder.mkdir()
    return folder


def report(rows: list[Row], args: argparse.Namespace, load_at_start: tuple) -> None:
    timed = [r for r in rows if r.frames]
    setups = list(dict.fromkeys(r.setup for r in timed))
    best = {s: max(r.frames_per_s for r in timed if r.setup == s) for s in setups}
    print(
        f"\n{args.stacks} stacks x {args.frames} frames of {args.size}x{args.size}x4, "
        f"batch {args.batch}, {args.chunk_frames} frames per task, {args.repeats} rounds"
    )
    print(
        "| setup | frames/s (best) | frames/s (each round) | tasks | task s | "
        "idle ms/task | no-op ms/task |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in setups:
        rs = [r for r in timed if r.setup == s]
        each = ", ".join(f"{r.frames_per_s:.1f}" for r in rs)
        idle = [r.idle_ms_per_task for r in rs if r.idle_ms_per_task is not None]
        cells = [s, f"{best[s]:.1f}", each, "", "", "", ""]
        if idle:
            cells[3] = str(rs[0].tasks)
            cells[4] = f"{statistics.median(r.task_seconds for r in rs):.2f}"
            cells[5] = f"{statistics.median(idle):.1f}"
        if rs[0].noop_ms_per_task is not None:
            cells[6] = f"{rs[0].noop_ms_per_task:.2f}"
        print("| " + " | ".join(cells) + " |")
    w1, w2 = best.get("cluster, 1 worker"), best.get("cluster, 2 workers")
    l1, l2 = best.get("local, 1 process"), best.get("local, 2 processes (no Dask)")
    if w1 and w2:
        print(f"\nscaling 2 workers / 1 worker: {w2 / w1:.2f}x (best rounds)")
    if l1 and l2:
        print(f"the machine's own: 2 processes / 1 process without Dask: {l2 / l1:.2f}x")
    for r in range(1, args.repeats + 1):
        fps = {x.setup: x.frames_per_s for x in timed if x.round == r}
        ratios = [
            fps["cluster, 2 workers"] / fps["cluster, 1 worker"],
            fps["local, 2 processes (no Dask)"] / fps["local, 1 process"],
        ]
        print(f"round {r}: Dask 2/1 workers {ratios[0]:.2f}x, plain 2/1 processes {ratios[1]:.2f}x")
    for r in rows:
        if r.warmup_s is not None:
            print(f"{r.setup}: engines built in {r.warmup_s:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_start": load_at_start,
            "load_avg_end": os.getloadavg(),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
        "scaling_2_over_1": (w2 / w1) if w1 and w2 else None,
        "plain_processes_2_over_1": (l2 / l1) if l1 and l2 else None,
    }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(
        f"load average (1 min): {load_at_start[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    sys.exit(main())
