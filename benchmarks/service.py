"""Live-service benchmark: offered-load sweep from 4 producer processes at 64x64x4.

For each offered rate the four camera processes (PUSH, one per plane) send frame sets on
an absolute schedule; a SUB socket in this process receives the localizations. Reports
delivered fps, dropped frame sets (as the service counts them), latency p50/p99 (camera
timestamp -> publish), and the ratio of the service's saturated throughput to the raw
engine throughput measured in the same run (engine alone, same model, backend and batch
size, before and after the sweep).

    python benchmarks/service.py            # full sweep (~3-4 min on 2 busy cores)
    python benchmarks/service.py --quick    # a few short steps (~1 min)
    python benchmarks/service.py --registration identity   # float32 cameras, no registration

By default the cameras send uint16 with an affine registration on cameras 1-3 (gain and
baseline on all), as a real quad-camera set-up does; the engine registers on its device.

With ``--sizes`` it measures the pipeline's own ceiling instead (``benchmarks/
pipeline_ceiling.py``):

    python benchmarks/service.py --engine null --sizes 64,256,512 --registration affine
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and this file's name would
# shadow the `service` package (and engines.py the `engines` package)
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
# the repository first (spawned producer processes inherit sys.path: with only the
# editable install's meta-path finder, they would find this file as ``service``)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))  # last: for pipeline_ceiling only

import numpy as np  # noqa: E402
import zmq  # noqa: E402

SIDE = 64
PLANES = 4
FIRST_BATCH_NS = 50_000_000  # messages published this soon after the first: its batch


LOCKSTEP = 16  # with a barrier: the cameras wait for each other every this many frames


def producer(endpoint: str, name: str, plane: int, images: np.ndarray, conn, barrier=None) -> None:
    """Camera process: on ``(first, count, rate_hz, t0)`` send ``count`` frames, reply.

    With ``barrier`` (shared by the cameras) they stay within ``LOCKSTEP`` frames of each
    other, as cameras on one trigger do, however the OS schedules the processes."""
    from service.wire import encode_frame

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 8)
    sock.connect(endpoint)
    while True:
        job = conn.recv()
        if job is None:
            break
        first, count, rate_hz, t0 = job
        for i in range(count):
            if rate_hz > 0:
                delay = t0 + i / rate_hz - time.time()
                if delay > 0:
                    time.sleep(delay)
            img = images[(first + i) % len(images)]
            sock.send_multipart(
                encode_frame(name, plane, first + i, img, time.time_ns()), copy=False
            )
            if barrier is not None and i % LOCKSTEP == LOCKSTEP - 1:
                try:
                    barrier.wait(60)
                except threading.BrokenBarrierError:
                    barrier = None
        conn.send(count)
    sock.close(linger=1000)
    ctx.term()


class Subscriber(threading.Thread):
    """Collects ``(frame, t_cam_ns, t_pub_ns)`` of every localization message."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.rows: list[tuple[int, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from service.wire import decode_locs

        while not self.stop.is_set():
            if self.sock.poll(50):
                m = decode_locs(self.sock.recv_multipart())
                self.rows.append((m.frame, m.t_cam_ns, m.t_pub_ns))
        self.sock.close(linger=0)


@dataclass
class Step:
    offered_fps: float  # 0: unpaced (as fast as the service takes them)
    policy: str
    sent: int
    delivered: int
    dropped: int
    delivered_fps: float  # unpaced: steady state, after the first batch was published
    p50_ms: float
    p99_ms: float
    mean_batch: float
    engine_fps_in_run: float  # frame sets / s of engine time inside the service, this step


def engine_fps(
    engine: object, frames: np.ndarray, batch: int, seconds: float, registration=None
) -> float:
    """Raw engine throughput on batches of ``batch`` frame sets (frame sets / s); with a
    ``registration``, on raw camera frames registered by the engine (as in the service)."""

    def call(chunk: np.ndarray) -> None:
        if registration is None:
            engine.infer(chunk)
        else:
            engine.infer_raw(list(chunk), registration)

    call(frames[:batch])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        i = (n // batch * batch) % (len(frames) - batch)
        call(frames[i : i + batch])
        n += batch
    return n / (time.perf_counter() - t0)


def run_step(
    pipeline, conns, sub: Subscriber, first: int, count: int, rate: float, policy: str
) -> Step:
    pipeline.update_config({"drop_policy": policy})
    before = pipeline.snapshot()
    t0 = time.time() + 0.2
    for c in conns:
        c.send((first, count, rate, t0))
    for c in conns:
        c.recv()
    deadline = time.monotonic() + 120
    st = pipeline.stats
    while time.monotonic() < deadline:  # drain: every set published or counted as dropped
        done = (
            st.published
            - before["publisher"]["published"]
            + sum(st.set_drops.values())
            + st.queue_drops
            - _drops(before)
        )
        if done >= count and pipeline.batcher.depth == 0:
            break
        time.sleep(0.1)
    time.sleep(0.1)
    after = pipeline.snapshot()
    rows = [r for r in sub.rows if first <= r[0] < first + count]
    lat = np.array([(p - c) / 1e6 for _, c, p in rows]) if rows else np.zeros(1)
    span_s = (max(p for *_, p in rows) / 1e9 - t0) if rows else 1.0
    if rate == 0 and len(rows) > 1:  # unpaced: steady state after the first batch
        pubs = sorted(p for *_, p in rows)
        later = [p for p in pubs if p > pubs[0] + FIRST_BATCH_NS]
        span_s = (pubs[-1] - pubs[0]) / 1e9
        rows_fps = len(later) / span_s if span_s > 0 else 0.0
    else:
        rows_fps = len(rows) / span_s
    batches = after["inference"]["batches"] - before["inference"]["batches"]
    sets = after["inference"]["frame_sets"] - before["inference"]["frame_sets"]
    busy_s = after["inference"]["engine_busy_s"] - before["inference"]["engine_busy_s"]
    return Step(
        rate,
        policy,
        count,
        len(rows),
        _drops(after) - _drops(before),
        round(rows_fps, 2),
        round(float(np.percentile(lat, 50)), 1),
        round(float(np.percentile(lat, 99)), 1),
        round(sets / max(batches, 1), 2),
        round(sets / busy_s, 2) if busy_s > 0 else 0.0,
    )


def _drops(s: dict) -> int:
    return sum(s["assembler"]["dropped"].values()) + s["batcher"]["dropped"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short steps, fewer rates")
    ap.add_argument("--model", default="default")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    ap.add_argument(
        "--engine",
        default=None,
        help="with --sizes: the backend whose service ceiling to measure (null: none)",
    )
    ap.add_argument(
        "--sizes",
        default=None,
        help="comma-separated frame sides: pipeline ceiling vs raw transport per size",
    )
    ap.add_argument(
        "--registration",
        choices=["identity", "affine"],
        default="affine",
        help="affine (default): uint16 cameras, affine on cameras 1-3, gain and baseline; "
        "the raw engine is timed on the same raw frames (infer_raw)",
    )
    ap.add_argument("--transports", default="tcp,ipc", help="comma-separated: tcp, ipc")
    ap.add_argument(
        "--ingest-threads",
        choices=["auto", "one", "per_camera"],
        default="auto",
        help="with --sizes: the service's [stream] ingest_threads",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="with --sizes: per step")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="with --sizes: pipeline ceilings per size and transport, each between two raw "
        "transport timings; the median ratio is reported",
    )
    ap.add_argument(
        "--rss-sets",
        type=int,
        default=10_000,
        help="with --sizes: frame sets of the long run at the middle size (0: none)",
    )
    args = ap.parse_args(argv)
    if args.sizes:
        return ceiling_main(args)

    import pipeline_ceiling as pc

    from engines.config import SimSettings
    from engines.inference import create_engine
    from engines.inference.registration import PlaneRegistration
    from engines.simulator import Simulator
    from service.pipeline import Pipeline
    from service.settings import CameraSettings, ServiceSettings

    frames = Simulator(SimSettings(), seed=3).sample(64, (5, 40)).frames.numpy()
    reg = None
    cam_regs: list[dict] = [{} for _ in range(PLANES)]
    if args.registration == "affine":  # uint16 camera frames, registered by the engine
        gains = np.array(pc.GAINS, np.float32)[:, None, None]
        base = np.array(pc.BASELINES, np.float32)[:, None, None]
        frames = np.clip(np.round(frames * gains + base), 0, 65535).astype(np.uint16)
        reg = PlaneRegistration.create(
            affine_px=np.array(pc.AFFINES), gain_adu=pc.GAINS, baseline_adu=pc.BASELINES
        )
        cam_regs = [
            {"affine": pc.AFFINES[k], "gain_adu": pc.GAINS[k], "baseline_adu": pc.BASELINES[k]}
            for k in range(PLANES)
        ]
    step_s = 3.0 if args.quick else 8.0
    engine = create_engine(args.model, args.backend)
    raw_before = engine_fps(engine, frames, args.max_batch, step_s / 2, reg)
    cams = [
        CameraSettings(name=f"cam{k}", plane=k, endpoint="tcp://127.0.0.1:*", **cam_regs[k])
        for k in range(PLANES)
    ]
    settings = ServiceSettings(
        cameras=cams,
        stream={"publish": "tcp://127.0.0.1:*", "assembly_timeout_ms": 1000},
        inference={
            "model": args.model,
            "backend": args.backend,
            "max_batch": args.max_batch,
            "max_delay_ms": 5,
            "queue_size": 16,
        },
    )
    ctx = zmq.Context()
    pipeline = Pipeline(settings)
    pipeline.start()
    sub = Subscriber(ctx, pipeline.publish_endpoint)
    sub.start()
    while pipeline.publisher.subscribers < 1:
        time.sleep(0.01)
    spawn = mp.get_context("spawn")
    conns, procs = [], []
    for k, (name, ep) in enumerate(pipeline.camera_endpoints().items()):
        a, b = spawn.Pipe()
        p = spawn.Process(target=producer, args=(ep, name, k, frames[:, k].copy(), b))
        p.start()
        conns.append(a)
        procs.append(p)
    fractions = (0.5, 1.0, 1.5) if args.quick else (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    steps: list[Step] = []
    raws = [raw_before]
    first = 0
    try:
        for frac in fractions:
            rate = round(frac * raw_before, 2)
            count = max(int(rate * step_s), 8)
            steps.append(run_step(pipeline, conns, sub, first, count, rate, "drop_oldest"))
            first += count
        # saturated throughput, alternating with the raw engine so that both see the same
        # machine load (other processes share these cores)
        for _ in range(2 if args.quick else 3):
            raws.append(engine_fps(engine, frames, args.max_batch, step_s / 2, reg))
            count = max(int(raws[-1] * step_s * (3 if args.quick else 4)), 24)
            steps.append(run_step(pipeline, conns, sub, first, count, 0.0, "block"))
            first += count
    finally:
        for c in conns:
            c.send(None)
        for p in procs:
            p.join(10)
        sub.stop.set()
        sub.join(5)
        pipeline.stop()
        ctx.term()
    raws.append(engine_fps(engine, frames, args.max_batch, step_s / 2, reg))
    sats = [s.delivered_fps for s in steps if s.offered_fps == 0]
    ratios = [sat / ((a + b) / 2) for sat, a, b in zip(sats, raws[1:-1], raws[2:], strict=True)]
    in_run = [
        s.delivered_fps / s.engine_fps_in_run
        for s in steps
        if s.offered_fps == 0 and s.engine_fps_in_run > 0
    ]
    args.backend = f"{args.backend} ({engine.backend})"
    report(steps, raws, ratios, in_run, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "steps": [asdict(s) for s in steps],
                    "engine_fps": raws,
                    "ratios": ratios,
                    "ratio_median": float(np.median(ratios)),
                    "ratios_in_run": in_run,
                },
                indent=2,
            )
        )
    return 0


def ceiling_main(args: argparse.Namespace) -> int:
    import pipeline_ceiling as pc

    sizes = [int(v) for v in args.sizes.split(",")]
    transports = [v.strip() for v in args.transports.split(",")]
    engine = args.engine or args.backend
    print(
        f"pipeline ceiling, engine {engine}, registration {args.registration}, "
        f"4 producer processes unpaced (uint16), max_batch 16, drop_policy block, "
        f"ingest_threads {args.ingest_threads}; "
        f"raw transport: the same messages into 4 PULL sockets, one copy each"
    )
    print(pc.HEADER, flush=True)
    t0 = time.time()
    results = pc.run(
        producer,
        engine=engine,
        sizes=sizes,
        registration=args.registration,
        transports=transports,
        seconds=args.seconds,
        rss_sets=args.rss_sets,
        model=args.model,
        repeats=args.repeats,
        ingest_threads=args.ingest_threads,
    )
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        meta = {"engine": engine, "registration": args.registration, "sizes": sizes}
        meta["ingest_threads"] = args.ingest_threads
        args.json.write_text(json.dumps({**meta, "results": pc.as_json(results)}, indent=2))
    return 0


def report(
    steps: list[Step],
    raws: list[float],
    ratios: list[float],
    in_run: list[float],
    args: argparse.Namespace,
) -> None:
    print(
        f"model {args.model}, backend {args.backend}, {PLANES}x{SIDE}x{SIDE}, "
        f"registration {args.registration}, "
        f"max_batch {args.max_batch}, queue 16 frame sets; 4 producer processes"
    )
    print(
        f"{'offered fps':>11} {'policy':>11} {'sent':>6} {'delivered':>9} {'dropped':>7} "
        f"{'deliv. fps':>10} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'engine fps':>10}"
    )
    for s in steps:
        offered = f"{s.offered_fps:.1f}" if s.offered_fps else "unpaced"
        print(
            f"{offered:>11} {s.policy:>11} {s.sent:>6} {s.delivered:>9} {s.dropped:>7} "
            f"{s.delivered_fps:>10.1f} {s.p50_ms:>8.1f} {s.p99_ms:>8.1f} {s.mean_batch:>6.2f} "
            f"{s.engine_fps_in_run:>10.1f}"
        )
    print(
        "raw engine fps (before sweep, then around each unpaced step): "
        + ", ".join(f"{r:.1f}" for r in raws)
    )
    print(
        "service throughput / raw engine throughput per unpaced step: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + f"; median {np.median(ratios):.3f} (target >= 0.9)"
    )
    print(
        "same, against the engine's own rate inside the service during each step: "
        + ", ".join(f"{r:.3f}" for r in in_run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
