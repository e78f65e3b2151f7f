"""The live pipeline's own ceiling against the raw ZeroMQ transport of the same messages.

Used by ``benchmarks/service.py --engine null --sizes 64,256,512 --registration affine``.
For each frame size and transport (``tcp://``, ``ipc://``), in one run:

- **raw transport** (timed right before and right after each pipeline ceiling; the
  ratio is to their mean, and with ``--repeats`` k the median of k such ratios): the
  same four producer processes (one PUSH camera per plane, uint16 frames encoded by
  :func:`service.wire.encode_frame`) into four PULL sockets of this process, one
  receive thread per socket, each message's pixels copied once into a preallocated
  buffer: what ZeroMQ and one copy allow on this machine.
- **pipeline ceiling**: the real :class:`service.pipeline.Pipeline` (what ``voxloc
  serve`` runs) with the given engine (``null``: no device compute), the registration
  (``affine``: a rotation, shift and scale on cameras 1-3, gain and baseline on all),
  ``drop_policy = "block"``, producers unpaced; counted at the subscriber from the first
  published batch to the last. The subscriber is a process of its own, as a dashboard or
  a recording client is: its decoding is not the service's work (in the service's
  process it cost ~35 us per frame set at 4x256x256, and its socket's I/O thread more).
- **latency**: the pipeline again, paced at 50 % of the ceiling just measured
  (``drop_oldest``), p50/p99 from camera timestamp to publication.

Resident memory of this process (the service) is printed at the start and the end of
the long run at the middle size (``--rss-sets`` frame sets). Beside the rates, the CPU
time of this process per frame set (all its threads), in the pipeline's ceiling step and
in the raw transport: the work per set, which the machine's load moves less than rates.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

PLANES = 4
AFFINES = [
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    [[1.0, 0.0, 1.3], [0.0, 1.0, -0.7]],
    [[float(np.cos(0.02)), float(-np.sin(0.02)), 0.9], [float(np.sin(0.02)), 0.99, -0.4]],
    [[1.01, 0.0, -0.5], [0.0, 0.99, 0.8]],
]
GAINS = [2.0, 1.5, 2.5, 1.0]
BASELINES = [100.0, 90.0, 110.0, 100.0]
PROBE_SETS = 400


@dataclass
class SizeResult:
    size: int
    transport: str
    raw_fps: float  # mean of the two below
    raw_fps_around: list[float]  # raw transport right before and right after the pipeline
    pipeline_fps: float
    ratio: float  # the median of ``ratios``; the rates above are that pair's
    ratios: list[float]  # every repeat's ceiling over the raw rates around it
    pipeline_mb_s: float  # camera payload bytes delivered per second, MB/s
    raw_mb_s: float
    paced_fps: float  # offered at 50 % of the ceiling
    delivered: int
    sent: int
    p50_ms: float
    p99_ms: float
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    rss_sets: int = 0
    rss_samples_mb: list[float] | None = None  # every 1/5 of the long run
    engine_fps: float | None = None  # the engine alone on the same raw sets (not null)
    service_engine_ratio: float | None = None
    # CPU time of the receiving process per frame set (every thread, user + system), us:
    # the pipeline at its ceiling, the raw transport (medians over the repeats); less
    # sensitive to the machine's load than the rates
    cpu_us_per_set: float | None = None
    raw_cpu_us_per_set: float | None = None


def camera_images(size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """``(n, PLANES, size, size)`` uint16 camera frames (background + a few spots), ADU."""
    rng = np.random.default_rng(seed)
    img = rng.poisson(20.0, (n, PLANES, size, size)).astype(np.float32) * 2 + 100
    yy, xx = np.mgrid[:size, :size]
    for f in range(n):
        for _ in range(max(size * size // 400, 4)):
            x0, y0 = rng.uniform(4, size - 4, 2)
            img[f] += 800 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 3.0)
    return np.clip(img, 0, 65535).astype(np.uint16)


def endpoint(transport: str, folder: Path, name: str) -> str:
    if transport == "tcp":
        return "tcp://127.0.0.1:*"
    return f"ipc://{folder / name}"


class Producers:
    """Four camera processes on one trigger (within ``LOCKSTEP`` frames of each other:
    unpaced processes on a loaded machine drift hundreds of frames apart, which the
    assembler rightly drops as window overflow); ``start``/``wait`` one step."""

    def __init__(
        self, target: Callable[..., None], endpoints: list[str], images: np.ndarray
    ) -> None:
        spawn = mp.get_context("spawn")
        self.conns, self.procs = [], []
        self.barrier = barrier = spawn.Barrier(len(endpoints))  # one trigger: lockstep
        for k, ep in enumerate(endpoints):
            a, b = spawn.Pipe()
            args = (ep, f"cam{k}", k, images[:, k].copy(), b, barrier)
            p = spawn.Process(target=target, args=args)
            p.start()
            self.conns.append(a)
            self.procs.append(p)

    def start(self, first: int, count: int, rate: float) -> float:
        t0 = time.time() + 0.2
        for c in self.conns:
            c.send((first, count, rate, t0))
        return t0

    def wait(self) -> None:
        for c in self.conns:
            c.recv()

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def subscriber_process(endpoint: str, conn: Any) -> None:
    """The localization consumer, in a process of its own (as a dashboard or a recording
    client is): keeps ``(frame, t_cam_ns, t_pub_ns)`` of every message (its header only);
    on ``(first, count)`` replies with the rows of those frames, on ``None`` ends."""
    import msgpack

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    rows: list[tuple[int, int, int]] = []
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        if conn.poll(0):
            job = conn.recv()
            if job is None:
                break
            first, count = job
            conn.send([r for r in rows if first <= r[0] < first + count])
        if poller.poll(20):
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                h = msgpack.unpackb(parts[0])
                rows.append((h["frame"], h["t_cam_ns"], h["t_pub_ns"]))
    sock.close(linger=0)
    ctx.term()


class SubscriberProcess:
    """:func:`subscriber_process` driven from here: the benchmark's only consumer of the
    pipeline's localizations, so that its work is not counted as the service's."""

    def __init__(self, endpoint: str) -> None:
        spawn = mp.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.proc = spawn.Process(target=subscriber_process, args=(endpoint, child))
        self.proc.start()

    def rows(self, first: int, count: int) -> list[tuple[int, int, int]]:
        self.conn.send((first, count))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def raw_transport(
    target: Callable[..., None],
    transport: str,
    folder: Path,
    images: np.ndarray,
    seconds: float,
    tag: str = "",
    cpu_us: list[float] | None = None,
) -> float:
    """Frame sets/s through 4 PUSH -> 4 PULL sockets, one copy per message; appends
    this process's CPU time per frame set (us) to ``cpu_us``."""
    cpu_us = [] if cpu_us is None else cpu_us
    ctx = zmq.Context()
    socks, eps = [], []
    for k in range(PLANES):
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 64)
        s.bind(endpoint(transport, folder, f"raw{tag}{k}"))
        socks.append(s)
        eps.append(s.getsockopt_string(zmq.LAST_ENDPOINT))
    counts = [0] * PLANES
    stamps: list[list[float]] = [[] for _ in range(PLANES)]
    stop = threading.Event()
    h, w = images.shape[2:]

    def receive(k: int) -> None:
        buf = np.empty((h, w), np.uint16)
        sock = socks[k]
        while not stop.is_set():
            if not sock.poll(50):
                continue
            parts = sock.recv_multipart(copy=False)
            np.copyto(buf, np.frombuffer(parts[1].buffer, np.uint16).reshape(h, w))
            counts[k] += 1
            stamps[k].append(time.perf_counter())

    threads = [threading.Thread(target=receive, args=(k,), daemon=True) for k in range(PLANES)]
    for t in threads:
        t.start()
    prod = Producers(target, eps, images)
    try:
        prod.start(0, PROBE_SETS, 0.0)  # probe: connections up, rate estimate
        prod.wait()
        _wait_counts(counts, PROBE_SETS)
        probe = _rate(stamps, PROBE_SETS)
        n = max(int(probe * seconds), PROBE_SETS)
        for s in stamps:
            s.clear()
        cpu0 = _cpu_s()
        prod.start(PROBE_SETS, n, 0.0)
        prod.wait()
        _wait_counts(counts, PROBE_SETS + n)
        cpu_us.append((_cpu_s() - cpu0) / n * 1e6)
        return _rate(stamps, n)
    finally:
        prod.close()
        stop.set()
        for t in threads:
            t.join(5)
        for s in socks:
            s.close(linger=0)
        ctx.term()


def _cpu_s() -> float:
    """CPU time of this process (every thread, user + system), s."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


def _wait_counts(counts: list[int], n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while min(counts) < n and time.monotonic() < deadline:
        time.sleep(0.005)


def _rate(stamps: list[list[float]], n: int) -> float:
    """Frame sets/s: the slowest camera's messages over its own span (first excluded)."""
    rates = []
    for s in stamps:
        if len(s) > 1 and s[-1] > s[0]:
            rates.append((len(s) - 1) / (s[-1] - s[0]))
    return min(rates) if rates else 0.0


def pipeline_settings(
    engine: str,
    size: int,
    registration: str,
    transport: str,
    folder: Path,
    model: str,
    ingest_threads: str = "auto",
) -> Any:
    from service.settings import CameraSettings, ServiceSettings

    cams = []
    for k in range(PLANES):
        reg = (
            {"affine": AFFINES[k], "gain_adu": GAINS[k], "baseline_adu": BASELINES[k]}
            if registration == "affine"
            else {}
        )
        cams.append(
            CameraSettings(
                name=f"cam{k}",
                plane=k,
                endpoint=endpoint(transport, folder, f"cam{k}"),
                dtype="uint16",
                **reg,
            )
        )
    return ServiceSettings(
        cameras=cams,
        stream={
            "publish": endpoint(transport, folder, "locs"),
            "assembly_timeout_ms": 1000,
            "height": size,
            "width": size,
            "rcvhwm": 64,
            "ingest_threads": ingest_threads,
        },
        inference={
            "model": model,
            "backend": engine,
            "max_batch": 16,
            "max_delay_ms": 2,
            "queue_size": 64,
            "drop_policy": "block",
        },
    )


def pipeline_steps(
    target: Callable[..., None],
    settings: Any,
    images: np.ndarray,
    seconds: float,
    rss_sets: int,
) -> dict[str, Any]:
    """Ceiling (unpaced, block), then 50 % of it (paced, drop_oldest); optional long run."""
    from service.pipeline import Pipeline

    pipeline = Pipeline(settings)
    pipeline.start()
    sub = SubscriberProcess(pipeline.publish_endpoint)
    while pipeline.publisher.subscribers < 1:
        time.sleep(0.01)
    prod = Producers(target, list(pipeline.camera_endpoints().values()), images)
    out: dict[str, Any] = {}
    try:
        first = 0
        probe = _send(pipeline, prod, sub, first, PROBE_SETS, 0.0, "block")
        first += PROBE_SETS
        n = max(int(probe["fps"] * seconds), PROBE_SETS)
        ceiling = _send(pipeline, prod, sub, first, n, 0.0, "block")
        first += n
        out["fps"] = ceiling["fps"]
        out["cpu_us"] = ceiling["cpu_us"]
        rate = 0.5 * ceiling["fps"]
        paced = _send(pipeline, prod, sub, first, max(int(rate * seconds), 50), rate, "drop_oldest")
        first += paced["sent"]
        out.update(paced_fps=rate, paced=paced)
        if rss_sets:
            proc = psutil.Process()
            out["rss_start_mb"] = proc.memory_info().rss / 2**20
            part = max(rss_sets // 5, 1)
            samples = []
            for _ in range(5):
                _send(pipeline, prod, sub, first, part, 0.0, "block")
                first += part
                samples.append(round(proc.memory_info().rss / 2**20, 1))
            out["rss_end_mb"] = samples[-1]
            out["rss_samples_mb"] = samples
    finally:
        prod.close()
        sub.close()
        pipeline.stop()
    return out


def _send(
    pipeline: Any,
    prod: Producers,
    sub: SubscriberProcess,
    first: int,
    count: int,
    rate: float,
    policy: str,
) -> dict[str, Any]:
    pipeline.update_config({"drop_policy": policy})
    drops0, published0 = _drops(pipeline), pipeline.stats.published
    cpu0 = _cpu_s()
    t0 = prod.start(first, count, rate)
    prod.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = pipeline.stats.published - published0 + _drops(pipeline) - drops0
        if done >= count and pipeline.batcher.depth == 0:
            break
        time.sleep(0.05)
    cpu_us = (_cpu_s() - cpu0) / count * 1e6
    time.sleep(0.1)  # the last messages on their way to the subscriber
    rows = sub.rows(first, count)
    lat = np.array([(p - c) / 1e6 for _, c, p in rows]) if rows else np.zeros(1)
    pubs = sorted(p for *_, p in rows)
    if rate == 0 and len(pubs) > 1:  # steady state: from the first publication on
        span = (pubs[-1] - pubs[0]) / 1e9
        fps = (len(pubs) - 1) / span if span > 0 else 0.0
    else:
        fps = len(rows) / max(pubs[-1] / 1e9 - t0, 1e-9) if pubs else 0.0
    if not rows:
        snap = pipeline.snapshot()
        print(
            f"  no frame set of {first}..{first + count - 1} published: dropped "
            f"{snap['assembler']['dropped']}, batcher {snap['batcher']['dropped']}, "
            f"cameras {[(c['frames_in'], c['rejects']) for c in snap['cameras'].values()]}",
            flush=True,
        )
    return {
        "sent": count,
        "delivered": len(rows),
        "dropped": _drops(pipeline) - drops0,
        "fps": fps,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "cpu_us": cpu_us,
    }


def engine_alone(
    engine_name: str, model: str, images: np.ndarray, registration: str, seconds: float
) -> float:
    """Frame sets/s of the engine alone on the same raw sets (batch 16, infer_raw)."""
    from engines.inference import create_engine
    from engines.inference.registration import PlaneRegistration

    reg = (
        PlaneRegistration.create(
            affine_px=np.array(AFFINES), gain_adu=GAINS, baseline_adu=BASELINES
        )
        if registration == "affine"
        else PlaneRegistration.identity(PLANES)
    )
    engine = create_engine(model, engine_name)
    try:
        batch = [images[i % len(images)] for i in range(16)]
        engine.infer_raw(batch, reg)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            engine.infer_raw(batch, reg)
            n += len(batch)
        return n / (time.perf_counter() - t0)
    finally:
        engine.close()


def _drops(pipeline: Any) -> int:
    st = pipeline.stats
    return sum(st.set_drops.values()) + st.queue_drops


def run(
    target: Callable[..., None],
    *,
    engine: str,
    sizes: list[int],
    registration: str,
    transports: list[str],
    seconds: float,
    rss_sets: int,
    model: str,
    repeats: int = 1,
    ingest_threads: str = "auto",
) -> list[SizeResult]:
    """Per size and transport: the raw transport, then ``repeats`` times the pipeline
    followed by the raw transport again; each pipeline ceiling is divided by the mean of
    the raw rates timed right before and right after it, and the median of those ratios
    is the result (single pairs on a shared 2-core machine range over 2x)."""
    results = []
    rss_size = sizes[len(sizes) // 2] if rss_sets else None
    with tempfile.TemporaryDirectory(prefix="voxloc-bench-") as tmp:
        for size in sizes:
            images = camera_images(size)
            for transport in transports:
                folder = Path(tmp) / f"{transport}{size}"
                folder.mkdir()
                settings = pipeline_settings(
                    engine, size, registration, transport, folder, model, ingest_threads
                )
                long_run = rss_sets if (size == rss_size and transport == transports[0]) else 0
                raw_cpu: list[float] = []
                raws = [raw_transport(target, transport, folder, images, seconds, "0", raw_cpu)]
                pipes = []
                for k in range(repeats):
                    pipes.append(
                        pipeline_steps(target, settings, images, seconds, long_run if k == 0 else 0)
                    )
                    raws.append(
                        raw_transport(
                            target, transport, folder, images, seconds, f"{k + 1}", raw_cpu
                        )
                    )
                alone = (
                    engine_alone(engine, model, images, registration, seconds)
                    if engine != "null"
                    else None
                )
                results.append(_result(size, transport, raws, pipes, raw_cpu, alone, long_run))
                print_row(results[-1], flush=True)
    return results


def _result(
    size: int,
    transport: str,
    raws: list[float],
    pipes: list[dict[str, Any]],
    raw_cpu: list[float],
    alone: float | None,
    long_run: int,
) -> SizeResult:
    ratios = [
        p["fps"] / ((raws[k] + raws[k + 1]) / 2) if raws[k] + raws[k + 1] else 0.0
        for k, p in enumerate(pipes)
    ]
    mid = int(np.argsort(ratios)[len(ratios) // 2])  # the median pair (upper for even)
    pipe, raw = pipes[mid], (raws[mid] + raws[mid + 1]) / 2
    first = pipes[0]  # the paced step and the long run ran with the first
    paced = first["paced"]
    set_bytes = PLANES * size * size * 2
    return SizeResult(
        size=size,
        transport=transport,
        raw_fps=round(raw, 1),
        raw_fps_around=[round(raws[mid], 1), round(raws[mid + 1], 1)],
        pipeline_fps=round(pipe["fps"], 1),
        ratio=round(ratios[mid], 3),
        ratios=[round(r, 3) for r in ratios],
        pipeline_mb_s=round(pipe["fps"] * set_bytes / 1e6, 1),
        raw_mb_s=round(raw * set_bytes / 1e6, 1),
        paced_fps=round(first["paced_fps"], 1),
        delivered=paced["delivered"],
        sent=paced["sent"],
        p50_ms=round(paced["p50_ms"], 2),
        p99_ms=round(paced["p99_ms"], 2),
        rss_start_mb=_r(first.get("rss_start_mb")),
        rss_end_mb=_r(first.get("rss_end_mb")),
        rss_sets=long_run,
        rss_samples_mb=first.get("rss_samples_mb"),
        engine_fps=_r(alone),
        service_engine_ratio=round(pipe["fps"] / alone, 3) if alone else None,
        cpu_us_per_set=round(float(np.median([p["cpu_us"] for p in pipes])), 1),
        raw_cpu_us_per_set=round(float(np.median(raw_cpu)), 1),
    )


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


HEADER = (
    f"{'size':>9} {'transport':>9} {'raw fps':>9} {'pipeline fps':>12} {'ratio':>6} "
    f"{'MB/s':>7} {'raw MB/s':>8} {'@50% fps':>8} {'deliv/sent':>11} {'p50 ms':>7} "
    f"{'p99 ms':>7} {'CPU us/set':>10} {'raw CPU':>7}"
)


def print_row(r: SizeResult, flush: bool = False) -> None:
    print(
        f"{PLANES}x{r.size}x{r.size:<4} {r.transport:>9} {r.raw_fps:>9.1f} "
        f"{r.pipeline_fps:>12.1f} {r.ratio:>6.3f} {r.pipeline_mb_s:>7.1f} {r.raw_mb_s:>8.1f} "
        f"{r.paced_fps:>8.1f} {f'{r.delivered}/{r.sent}':>11} {r.p50_ms:>7.2f} "
        f"{r.p99_ms:>7.2f} {r.cpu_us_per_set:>10.1f} {r.raw_cpu_us_per_set:>7.1f}",
        flush=flush,
    )
    if len(r.ratios) > 1:
        print(f"  ratio of each repeat: {r.ratios}; median {r.ratio:.3f}", flush=flush)
    if r.rss_sets:
        print(
            f"  RSS over {r.rss_sets} frame sets at {PLANES}x{r.size}x{r.size}: "
            f"{r.rss_start_mb:.1f} MB at the start, {r.rss_end_mb:.1f} MB at the end "
            f"(every {r.rss_sets // 5}: {r.rss_samples_mb})",
            flush=flush,
        )
    if r.engine_fps:
        print(
            f"  engine alone on the same raw sets: {r.engine_fps:.1f} fps; "
            f"service / engine {r.service_engine_ratio:.3f}",
            flush=flush,
        )


def as_json(results: list[SizeResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
