"""Counters, rates and latency percentiles of the live pipeline, mirrored as Prometheus
metrics in a per-service registry (so several services can live in one process)."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

RATE_WINDOW_S = 5.0
LATENCY_SAMPLES = 2048
_LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Rate:
    """Events per second over the last ``RATE_WINDOW_S``."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()

    def add(self, n: int = 1, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.append((now, n))
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._events and now - self._events[0][0] > RATE_WINDOW_S:
            self._events.popleft()

    def per_s(self) -> float:
        now = time.monotonic()
        self._prune(now)
        if not self._events:
            return 0.0
        n = sum(k for _, k in self._events) - self._events[0][1]  # those after the first
        span = now - self._events[0][0]
        return n / span if n >= 1 and span > 0 else 0.0


class CameraCounters:
    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_ok = 0
        self.rejects: Counter[str] = Counter()
        self.connects = 0
        self.disconnects = 0
        self.last_frame: int | None = None
        self.last_in_s = float("-inf")  # monotonic time of its newest message
        self.last_ok_s = float("-inf")  # ... and of its newest accepted frame


class ServiceStats:
    """Thread-safe counters every stage reports to; ``snapshot()`` feeds ``GET /stats``."""

    def __init__(self, cameras: list[str]) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.cameras = {name: CameraCounters() for name in cameras}
        self.assembled = 0
        self.set_drops: Counter[str] = Counter({"timeout": 0, "missing": 0, "overflow": 0})
        self.queue_drops = 0
        self.batches = 0
        self.batched_sets = 0
        self.engine_s = 0.0
        self.published = 0
        self.last_published_s = float("-inf")
        self.last_in_s = float("-inf")  # newest message of any camera
        self.arriving_since_s = float("-inf")  # when messages began arriving after a pause
        self.health_window_s = 1.0  # a pause longer than this starts a new arrival streak
        self.model_swaps = 0
        self.failed_loads = 0
        self._rate_in = _Rate()
        self._rate_out = _Rate()
        self._latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.registry = CollectorRegistry()
        self._prom_init()

    def _prom_init(self) -> None:
        r = self.registry
        self.p_frames = PromCounter(
            "voxloc_camera_frames", "camera messages received", ["camera"], registry=r
        )
        self._p_frames: dict[str, Any] = {}
        self.p_rejects = PromCounter(
            "voxloc_camera_rejects", "camera messages rejected", ["camera", "reason"], registry=r
        )
        self.p_assembled = PromCounter(
            "voxloc_framesets_assembled", "complete frame sets", registry=r
        )
        self.p_dropped = PromCounter(
            "voxloc_framesets_dropped", "frame sets dropped", ["stage", "reason"], registry=r
        )
        self.p_batches = PromCounter("voxloc_batches", "engine batches", registry=r)
        self.p_batch_size = Histogram(
            "voxloc_batch_size",
            "frame sets per batch",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.p_engine = PromCounter("voxloc_engine_seconds", "time spent in the engine", registry=r)
        self.p_published = PromCounter(
            "voxloc_framesets_published", "localization messages published", registry=r
        )
        self.p_latency = Histogram(
            "voxloc_latency_seconds",
            "camera timestamp to publish",
            registry=r,
            buckets=_LATENCY_BUCKETS_S,
        )
        self.p_swaps = PromCounter("voxloc_model_swaps", "model switches", registry=r)
        self.p_failed = PromCounter("voxloc_model_load_failures", "failed model loads", registry=r)
        self.p_queue = Gauge("voxloc_queue_depth", "items waiting", ["queue"], registry=r)
        self.p_stream = Gauge(
            "voxloc_stream_healthy",
            "0 while frames arrive but nothing is published (GET /health/stream)",
            registry=r,
        )
        self.p_stream.set(1)
        self.p_subscribers = Gauge("voxloc_subscribers", "localization subscribers", registry=r)
        self.p_model = Gauge(
            "voxloc_model_info", "active model", ["name", "version", "backend"], registry=r
        )

    # -- ingest ---------------------------------------------------------------------------
    # counted per call, not per message: the ingest passes the messages it took at once
    def frames_in(self, camera: str, n: int = 1) -> None:
        """``n`` messages of ``camera`` received (valid or not)."""
        self._frames_in({camera: n})

    def frames_in_from(self, cameras: list[str]) -> None:
        """One message received from each of ``cameras`` (a name may repeat): the
        one-thread ingest's round, counted under one hold of the lock."""
        counts: dict[str, int] = {}
        for camera in cameras:
            counts[camera] = counts.get(camera, 0) + 1
        self._frames_in(counts)

    def _frames_in(self, counts: dict[str, int]) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self.last_in_s > self.health_window_s:
                self.arriving_since_s = now  # frames arrive again after a pause
            self.last_in_s = now
            for camera, n in counts.items():
                cam = self.cameras[camera]
                cam.frames_in += n
                cam.last_in_s = now
        for camera, n in counts.items():
            self._camera_frames(camera).inc(n)

    def frames_ok(self, camera: str, n: int, newest: int) -> None:
        """``n`` frames of ``camera`` accepted, for sets up to index ``newest``."""
        with self._lock:
            cam = self.cameras[camera]
            cam.frames_ok += n
            cam.last_ok_s = time.monotonic()
            cam.last_frame = newest if cam.last_frame is None else max(cam.last_frame, newest)

    def _camera_frames(self, camera: str) -> Any:
        child = self._p_frames.get(camera)
        if child is None:  # labels() looks the child up under a lock: once per camera
            child = self._p_frames[camera] = self.p_frames.labels(camera)
        return child

    def reject(self, camera: str, reason: str) -> None:
        with self._lock:
            self.cameras[camera].rejects[reason] += 1
        self.p_rejects.labels(camera, reason).inc()

    def connection(self, camera: str, connected: bool) -> None:
        with self._lock:
            cam = self.cameras[camera]
            if connected:
                cam.connects += 1
            else:
                cam.disconnects += 1

    # -- assembly, queue, inference, publish ----------------------------------------------
    def set_assembled(self, n: int = 1) -> None:
        with self._lock:
            self.assembled += n
            self._rate_in.add(n)
        self.p_assembled.inc(n)

    def set_dropped(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.set_drops[reason] += n
        self.p_dropped.labels("assembler", reason).inc(n)

    def queue_dropped(self, policy: str, n: int = 1) -> None:
        with self._lock:
            self.queue_drops += n
        self.p_dropped.labels("batcher", policy).inc(n)

    def batch_done(self, size: int, engine_s: float) -> None:
        with self._lock:
            self.batches += 1
            self.batched_sets += size
            self.engine_s += engine_s
        self.p_batches.inc()
        self.p_engine.inc(engine_s)
        self.p_batch_size.observe(size)

    def published_one(self, latency_ns: int) -> None:
        self.published_many([latency_ns])

    def published_many(self, latencies_ns: list[int]) -> None:
        """Localization messages published, one latency (camera to publish) each."""
        with self._lock:
            self.published += len(latencies_ns)
            self.last_published_s = now = time.monotonic()
            self._rate_out.add(len(latencies_ns), now)
            self._latency_ms.extend(t / 1e6 for t in latencies_ns)
        self.p_published.inc(len(latencies_ns))
        for t in latencies_ns:
            self.p_latency.observe(max(t, 0) / 1e9)

    def model_switched(self, name: str, version: str, backend: str, first: bool) -> None:
        with self._lock:
            self.model_swaps += 0 if first else 1
        if not first:
            self.p_swaps.inc()
        self.p_model.clear()
        self.p_model.labels(name, version, backend).set(1)

    def load_failed(self) -> None:
        with self._lock:
            self.failed_loads += 1
        self.p_failed.inc()

    # -- read -----------------------------------------------------------------------------
    def latency_ms(self) -> dict[str, float | int | None]:
        with self._lock:
            samples = np.asarray(self._latency_ms, dtype=np.float64)
        if samples.size == 0:
            return {"p50": None, "p99": None, "count": 0}
        p50, p99 = np.percentile(samples, [50, 99])
        return {
            "p50": round(float(p50), 3),
            "p99": round(float(p99), 3),
            "count": int(samples.size),
        }

    def stream_health(self, window_s: float, sync: dict[str, dict[str, object]]) -> dict[str, Any]:
        """Stream state: ``idle`` (no camera sent within ``window_s``), ``streaming``
        (something published within it) or ``stalled`` (frames arrive and nothing was
        published for longer than ``window_s`` since they began arriving), with the
        reasons per camera."""
        now = time.monotonic()
        with self._lock:
            cams = {n: (c.last_in_s, c.last_ok_s, dict(c.rejects)) for n, c in self.cameras.items()}
            self.health_window_s = window_s
            last_pub = max(self.last_published_s, self.arriving_since_s)
        arriving = any(now - t_in <= window_s for t_in, _, _ in cams.values())
        if not arriving:
            state = "idle"
        elif now - last_pub <= window_s:
            state = "streaming"
        else:
            state = "stalled"
        reasons: dict[str, list[str]] = {}
        for name, (t_in, t_ok, rejects) in cams.items():
            why = []
            if now - t_in > window_s:
                why.append("silent")
            elif now - t_ok > window_s:
                why.append("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(rejects.items())))
            sync_state = str(sync.get(name, {}).get("state", "synced"))
            if sync_state != "synced":
                why.append(sync_state)
            if why:
                reasons[name] = why
        self.p_stream.set(1 if state != "stalled" else 0)
        return {"state": state, "healthy": state != "stalled", "cameras": reasons}

    def snapshot(self) -> dict[str, Any]:
        """Counters (JSON-ready); the pipeline adds endpoints, states and depths."""
        with self._lock:
            cameras = {
                name: {
                    "frames_in": c.frames_in,
                    "frames_ok": c.frames_ok,
                    "rejects": dict(c.rejects),
                    "connects": c.connects,
                    "disconnects": c.disconnects,
                    "last_frame": c.last_frame,
                }
                for name, c in self.cameras.items()
            }
            rejects: Counter[str] = Counter()
            for c in self.cameras.values():
                rejects.update(c.rejects)
            out = {
                "uptime_s": round(time.monotonic() - self.started, 3),
                "cameras": cameras,
                "rejects": dict(rejects),
                "assembler": {"assembled": self.assembled, "dropped": dict(self.set_drops)},
                "batcher": {"dropped": self.queue_drops},
                "inference": {
                    "batches": self.batches,
                    "frame_sets": self.batched_sets,
                    "mean_batch_size": round(self.batched_sets / self.batches, 3)
                    if self.batches
                    else 0.0,
                    "engine_busy_s": round(self.engine_s, 3),
                    "model_swaps": self.model_swaps,
                    "failed_loads": self.failed_loads,
                },
                "publisher": {"published": self.published},
                "fps_in": round(self._rate_in.per_s(), 2),
                "fps_out": round(self._rate_out.per_s(), 2),
            }
        out["latency_ms"] = self.latency_ms()
        return out
