"""Inference engine benchmark: backends x frame sizes x batch sizes, plus a long run.

For every available backend (ONNX Runtime and torch on CPU always; torch CUDA, ONNX
Runtime CUDA and TensorRT where present), every square frame size and batch size, it
reports frames/s, ms per frame, achieved GFLOP/s (``engines.network.flops_per_frame``) and
the ratio to the paper-style implementation (torch eager float32, full ``(B, P, 4, H, W)``
output copied to the host and decoded there in numpy) measured in the same run on the same
device. Backends are timed round-robin per configuration, so a load change on the machine
hits all of them alike; per-call times are medians. Then a long run of the default engine
(``create_engine(backend="auto")``) over 10,000 frames reports throughput per window and
resident memory at start and end.

    python benchmarks/engines.py --quick          # 64 and 256 px, batch 8, 500-frame long run
    python benchmarks/engines.py                  # the full grid (minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would shadow
# the `engines` package
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from engines.errors import EngineError  # noqa: E402
from engines.inference import create_engine  # noqa: E402
from engines.modeldir import load_model, resolve_model  # noqa: E402
from engines.network import flops_per_frame  # noqa: E402
from engines.simulator import Simulator  # noqa: E402

log = logging.getLogger("benchmarks.engines")
THRESHOLD = 0.5


class PaperStyle:
    """The paper-style implementation: eager float32, output to host, decode in numpy."""

    backend = "paper-style"

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.device = device
        self.net, self.info = load_model(model, device=device)
        self.planes = self.info.planes

    @torch.inference_mode()
    def infer(self, frames: np.ndarray, threshold: float = THRESHOLD) -> list:
        out = self.net(torch.from_numpy(frames).to(self.device)).cpu().numpy()
        g = self.info.settings.geometry
        b, k, i, j = np.nonzero(out[:, :, 0] > threshold)
        zeta = out[b, k, 1:, i, j]
        xyz = np.stack(
            [(j + zeta[:, 0]) * g.px_nm, (i + zeta[:, 1]) * g.px_nm, (k + zeta[:, 2]) * g.dz_nm],
            axis=-1,
        ).astype(np.float32)
        bounds = np.searchsorted(b, np.arange(frames.shape[0] + 1))
        return [xyz[bounds[f] : bounds[f + 1]] for f in range(frames.shape[0])]

    def close(self) -> None:
        pass


@dataclass
class Runner:
    name: str
    device: str
    engine: object
    baseline: str  # name of the paper-style runner on the same device


@dataclass
class Row:
    backend: str
    device: str
    size: int
    batch: int
    calls: int
    ms_per_call: float
    frames_per_s: float
    ms_per_frame: float
    gflop_per_s: float
    locs_per_frame: float
    ratio_to_paper: float | None = None
    default_cpu_engine: bool = False


@dataclass
class LongRun:
    backend: str
    device: str
    size: int
    batch: int
    frames: int
    seconds: float
    frames_per_s: float
    window_frames_per_s: list[float] = field(default_factory=list)
    window_rss_mb: list[float] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0


def rss_mb() -> float:
    """Resident set size of this process, MB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_frames(model: str, size: int, batch: int, seed: int = 0) -> np.ndarray:
    """``(batch, P, size, size)`` float32 frames at the training density (50 per 64x64)."""
    info = load_model(model)[1]
    sim = Simulator(info.settings, seed=seed)
    distinct = min(batch, 4)
    molecules = max(1, round(50 * size * size / 64**2))
    frames = sim.sample(distinct, molecules, height=size, width=size).frames.numpy()
    return np.ascontiguousarray(np.resize(frames, (batch, *frames.shape[1:])))


def build_runners(model: str, backends: list[str]) -> list[Runner]:
    """Paper-style baselines and engines; unavailable backends are logged and left out."""
    runners = [Runner("paper-style", "cpu", PaperStyle(model, "cpu"), "paper-style")]
    cuda = torch.cuda.is_available()
    if cuda:
        runners.append(Runner("paper-style", "cuda", PaperStyle(model, "cuda"), "paper-style"))
    specs = {
        "onnxruntime": [("onnxruntime", "cpu", {})]
        + ([("onnxruntime", "cuda", {})] if cuda else []),
        "torch": [("torch", "cpu", {}), ("torch", "cpu", {"precision": "bf16"})]
        + (
            [
                ("torch", "cuda", {}),
                ("torch", "cuda", {"cuda_graphs": True}),
                ("torch", "cuda", {"cuda_graphs": True, "precision": "fp16"}),
                ("torch", "cuda", {"cuda_graphs": True, "precision": "bf16"}),
            ]
            if cuda
            else []
        ),
        "tensorrt": [("tensorrt", "cuda", {"precision": p}) for p in ("fp32", "fp16")],
    }
    for backend in backends:
        for name, device, opts in specs[backend]:
            label = runner_label(name, opts)
            try:
                engine = create_engine(model, name, threshold=THRESHOLD, device=device, **opts)
            except EngineError as exc:
                log.warning("%s on %s left out: %s", label, device, exc)
                continue
            runners.append(Runner(label, device, engine, "paper-style"))
    return runners


def runner_label(backend: str, options: dict) -> str:
    return backend + "".join(f"[{k}={v}]" for k, v in options.items())


def default_cpu_label(model: str) -> str:
    """Runner label of what ``create_engine(backend="auto", device="cpu")`` picks here."""
    engine = create_engine(model, "auto", device="cpu")
    opts = {"precision": engine.precision} if engine.precision != "fp32" else {}
    engine.close()
    return runner_label(engine.backend, opts)


def time_config(
    runners: list[Runner], frames: np.ndarray, min_time_s: float, max_calls: int
) -> dict[tuple[str, str], tuple[list[float], int]]:
    """Round-robin timing: per runner a list of per-call seconds and localizations found."""
    times: dict[tuple[str, str], list[float]] = {(r.name, r.device): [] for r in runners}
    locs: dict[tuple[str, str], int] = {}
    for r in runners:  # warm-up: allocations, kernel choice, graph capture (per shape on GPUs)
        r.engine.infer(frames if r.device != "cpu" else frames[:1], THRESHOLD)
    while True:
        for r in runners:
            t0 = time.perf_counter()
            out = r.engine.infer(frames, THRESHOLD)
            times[(r.name, r.device)].append(time.perf_counter() - t0)
            locs[(r.name, r.device)] = sum(len(x) for x in out)
        spent = min(sum(t) for t in times.values())
        calls = len(next(iter(times.values())))
        if calls >= max_calls or spent >= min_time_s:
            return {k: (v, locs[k]) for k, v in times.items()}


def run_grid(
    runners: list[Runner],
    model: str,
    sizes: list[int],
    batches: list[int],
    min_time_s: float,
    max_calls: int,
    on_row: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Time every configuration; ``on_row`` sees the rows so far after each one."""
    planes = load_model(model)[1].planes
    rows: list[Row] = []
    for size in sizes:
        for batch in batches:
            frames = make_frames(model, size, batch)
            log.info("timing %dx%dx%d, batch %d", size, size, planes, batch)
            results = time_config(runners, frames, min_time_s, max_calls)
            for r in runners:
                per_call, n_locs = results[(r.name, r.device)]
                t = statistics.median(per_call)
                fps = batch / t
                rows.append(
                    Row(
                        r.name,
                        r.device,
                        size,
                        batch,
                        len(per_call),
                        1e3 * t,
                        fps,
                        1e3 / fps,
                        fps * flops_per_frame(planes, size, size) / 1e9,
                        n_locs / batch,
                    )
                )
            for row in rows[-len(runners) :]:
                base = next(
                    x
                    for x in rows[-len(runners) :]
                    if x.backend == "paper-style" and x.device == row.device
                )
                row.ratio_to_paper = row.frames_per_s / base.frames_per_s
            if on_row:
                on_row(rows)
    return rows


def long_run(model: str, frames_total: int, size: int, batch: int) -> LongRun:
    """The default engine over ``frames_total`` frames: windows of throughput and RSS."""
    engine = create_engine(model, "auto", threshold=THRESHOLD)
    frames = make_frames(model, size, batch, seed=1)
    engine.infer(frames)
    rss0 = rss_mb()
    windows, window_rss, done, t_start = [], [], 0, time.perf_counter()
    window = max(batch, frames_total // 10)
    t_win, win_done = t_start, 0
    while done < frames_total:
        engine.infer(frames, first_frame=done)
        done += batch
        win_done += batch
        if win_done >= window:
            now = time.perf_counter()
            windows.append(win_done / (now - t_win))
            window_rss.append(rss_mb())
            t_win, win_done = now, 0
    seconds = time.perf_counter() - t_start
    result = LongRun(
        engine.label,
        engine.device,
        size,
        batch,
        done,
        seconds,
        done / seconds,
        windows,
        window_rss,
        rss0,
        rss_mb(),
    )
    engine.close()
    return result


def machine() -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_avg_start": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(rows: list[Row], long: LongRun | None) -> None:
    head = (
        f"{'backend':<44} {'dev':<5} {'size':>5} {'batch':>5} {'frames/s':>9} "
        f"{'ms/frame':>9} {'GFLOP/s':>8} {'x paper':>8} {'locs/fr':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        name = r.backend + (" (default CPU)" if r.default_cpu_engine else "")
        print(
            f"{name:<44} {r.device:<5} {r.size:>5} {r.batch:>5} {r.frames_per_s:>9.2f} "
            f"{r.ms_per_frame:>9.2f} {r.gflop_per_s:>8.1f} {r.ratio_to_paper:>8.2f} "
            f"{r.locs_per_frame:>8.1f}"
        )
    if long:
        w = long.window_frames_per_s
        print(
            f"\nlong run: {long.backend} on {long.device}, {long.frames} frames of "
            f"{long.size}x{long.size}, batch {long.batch}: {long.frames_per_s:.1f} frames/s "
            f"({long.seconds:.0f} s); windows first/last {w[0]:.1f}/{w[-1]:.1f} frames/s; "
            f"RSS {long.rss_start_mb:.0f} MB -> {long.rss_end_mb:.0f} MB "
            f"(per window: {', '.join(f'{m:.0f}' for m in long.window_rss_mb)})"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="sizes 64 and 256, batch 8, 500-frame long run"
    )
    p.add_argument("--model", default="default")
    p.add_argument(
        "--backends",
        nargs="+",
        default=["onnxruntime", "torch", "tensorrt"],
        choices=["onnxruntime", "torch", "tensorrt"],
    )
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument(
        "--device", choices=["all", "cpu", "cuda"], default="all", help="time only these runners"
    )
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--min-time", type=float, default=None, help="seconds per config/backend")
    p.add_argument("--max-calls", type=int, default=20)
    p.add_argument("--long-frames", type=int, default=None)
    p.add_argument("--long-size", type=int, default=64)
    p.add_argument("--long-batch", type=int, default=32)
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/engines.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sizes = args.sizes or ([64, 256] if args.quick else [64, 128, 256, 512])
    batches = args.batches or ([8] if args.quick else [1, 8, 32])
    min_time = args.min_time if args.min_time is not None else (1.0 if args.quick else 3.0)
    long_frames = (
        args.long_frames if args.long_frames is not None else (500 if args.quick else 10_000)
    )
    model = str(resolve_model(args.model))
    info = machine()
    # the long run first, then the grid from small to large frames; the JSON is rewritten
    # after every configuration so an interrupted run keeps what it measured
    long = long_run(model, long_frames, args.long_size, args.long_batch) if long_frames else None
    default_cpu = default_cpu_label(model)
    runners = [r for r in build_runners(model, args.backends) if args.device in ("all", r.device)]

    def save(rows: list[Row], complete: bool = False) -> None:
        for r in rows:
            r.default_cpu_engine = r.backend == default_cpu and r.device == "cpu"
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "complete": complete,
                    "machine": {**info, "load_avg_now": os.getloadavg()},
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "long_run": asdict(long) if long else None,
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
            + "\n"
        )

    save([])
    rows = run_grid(runners, model, sizes, batches, min_time, args.max_calls, on_row=save)
    save(rows, complete=True)
    print_table(rows, long)
    for r in rows:
        if r.default_cpu_engine and r.device == "cpu":
            print(
                f"default CPU engine ({r.backend}) at {r.size}x{r.size}, batch {r.batch}: "
                f"{r.ratio_to_paper:.2f}x the paper-style implementation"
            )
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
