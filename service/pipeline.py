"""The live pipeline: ingest -> aligner -> batcher -> inference -> publisher.

The ingest (one thread for every camera, or one per camera: :mod:`service.receivers`)
validates each message and hands it to the aligner, which copies the payload into the
frame set's buffer; whichever thread completes sets queues them, in frame order (one
flush at a time). The inference
thread takes batches, runs the active model (registration included, on its device) and
publishes. Each ZeroMQ socket is used by one thread only. The control plane talks to
the pipeline through the methods here, never to the stages directly.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq
from prometheus_client import generate_latest

from engines.config import Geometry
from engines.errors import VoxlocError
from engines.io.loctable import TableMeta, model_meta
from service.acquisitions import Acquisitions
from service.aligner import Aligner
from service.batcher import Batcher
from service.curve import CurveServer
from service.drift import DriftObserver
from service.inference import LoadedModel, ModelManager, Submitted, submit_batch
from service.ingest import Ingest
from service.publisher import Publisher
from service.receivers import Receivers, ingest_mode
from service.settings import CameraRegistration, RuntimeConfig, ServiceSettings
from service.stats import ServiceStats
from service.types import Batch, LocalizationObserver, PipelineState

log = logging.getLogger(__name__)

IDLE_TICK_S = 0.05
JOIN_TIMEOUT_S = 10.0


class Pipeline:
    """Owns the stages, their threads and the lifecycle state."""

    def __init__(self, settings: ServiceSettings, *, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.state = PipelineState.CREATED
        self.stats = ServiceStats([c.name for c in settings.cameras])
        self._config = settings.runtime_config()
        self._registration = {c.name: c.registration() for c in settings.cameras}
        s = settings.stream
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self.aligner = Aligner(
            cameras=settings.cameras,
            planes=s.planes,
            height=s.height,
            width=s.width,
            timeout_s=self._config.assembly_timeout_ms / 1e3,
            window=s.window,
            stats=self.stats,
        )
        self.acquisitions = Acquisitions(
            begin=self.aligner.begin,
            current=lambda: self.aligner.current,
            counts=self._counts_by_reason,
            context=self._recording_context,
            record_dir=settings.recording.directory,
            table_meta=self._table_meta,
        )
        self.batcher = Batcher(
            queue_size=self._config.queue_size, policy=self._config.drop_policy, stats=self.stats
        )
        self.models = ModelManager(
            backend=settings.inference.backend,
            precision=settings.inference.precision,
            planes=s.planes,
            height=s.height,
            width=s.width,
            warmup_batch=self._config.max_batch,
            stats=self.stats,
            raw_dtypes=_raw_dtypes(settings),
        )
        self.ingest: Ingest | None = None
        self.publisher: Publisher | None = None
        self.curve: CurveServer | None = None  # [security] curve = true
        self.ingest_mode = ""  # "one" or "per_camera" once started (service.receivers)
        self._observers: list[LocalizationObserver] = []
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.stats.p_queue.labels("batcher").set_function(lambda: self.batcher.depth)
        self.stats.p_queue.labels("assembler").set_function(lambda: self.aligner.depth)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Load the configured model, bind every socket, start the threads."""
        if self.state is not PipelineState.CREATED:
            raise RuntimeError(f"pipeline can start once, it is {self.state.value}")
        self.state = PipelineState.STARTING
        try:
            self.models.load(self.settings.inference.model)
            self._use_engine_buffers()
            if self.settings.drift.enabled:
                self.add_observer(DriftObserver.for_pipeline(self))
            sec = self.settings.security
            if sec.curve:
                assert sec.server_key is not None and sec.client_keys is not None
                self.curve = CurveServer(
                    self._ctx,
                    server_key=sec.server_key,
                    client_keys=sec.client_keys,
                    registry=self.stats.registry,
                )
            self.ingest = Ingest(
                self._ctx,
                cameras=self.settings.cameras,
                stream=self.settings.stream,
                stats=self.stats,
                curve=self.curve,
            )
            self.publisher = Publisher(
                self._ctx,
                endpoint=self.settings.stream.publish,
                source=self.settings.name,
                sndhwm=self.settings.stream.sndhwm,
                stats=self.stats,
                curve=self.curve,
            )
            self.publisher.observers.extend([self.acquisitions, *self._observers])
        except BaseException:
            self.state = PipelineState.FAILED
            self._close_sockets()
            self.models.close()
            raise
        self.models.serving = True
        rx = Receivers(self.ingest, self.aligner, self._flush, self._stop)
        self.ingest_mode = ingest_mode(self.settings.stream, len(self.ingest.cameras))
        loops: list[tuple[str, Any, tuple[Any, ...]]] = (
            [("voxloc-ingest", rx.all_cameras, ())]
            if self.ingest_mode == "one"
            else [(f"voxloc-ingest-{c.name}", rx.one_camera, (c,)) for c in self.ingest.cameras]
        )
        loops.append(("voxloc-inference", self._inference_loop, ()))
        for name, target, args in loops:
            t = threading.Thread(target=self._guard, args=(target, *args), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.state = PipelineState.RUNNING
        log.info(
            "pipeline running: %d cameras, model %s",
            len(self.settings.cameras),
            self.models.active.name if self.models.active else None,
        )

    def stop(self) -> None:
        """Stop the threads and close every socket; safe to call twice."""
        if self.state in (PipelineState.STOPPED, PipelineState.CREATED):
            self.state = PipelineState.STOPPED
            return
        if self.state is not PipelineState.FAILED:
            self.state = PipelineState.STOPPING
        self._stop.set()
        self.batcher.close()
        for t in self._threads:
            t.join(JOIN_TIMEOUT_S)
            if t.is_alive():
                log.warning("thread %s did not stop within %.0f s", t.name, JOIN_TIMEOUT_S)
        for obs in self._observers:  # observers with a worker thread (drift) stop it here
            close = getattr(obs, "close", None)
            if callable(close):
                close()
        self.models.serving = False
        self.acquisitions.close()
        self._close_sockets()
        self.models.close()
        if self.state is not PipelineState.FAILED:
            self.state = PipelineState.STOPPED
        log.info("pipeline stopped")

    def _close_sockets(self) -> None:
        if self.ingest is not None:
            self.ingest.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.curve is not None:
            self.curve.close()
            self.curve = None
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    def _guard(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except Exception:
            log.exception("pipeline thread %s failed", threading.current_thread().name)
            self.state = PipelineState.FAILED
            self._stop.set()
            self.batcher.close()

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ready(self) -> bool:
        return self.state is PipelineState.RUNNING and self.models.active is not None

    @property
    def active_model(self) -> LoadedModel | None:
        """The model serving now (None before the first load)."""
        return self.models.active

    @property
    def model_loading(self) -> str | None:
        """The name of a model being loaded in the background, if any."""
        return self.models.loading

    # -- acquisitions (the registry's answers, for the control plane) --------------------
    def start_acquisition(
        self, name: str, metadata: dict[str, Any], record: str | None
    ) -> dict[str, Any]:
        return self.acquisitions.start(name, metadata, record)

    def stop_acquisition(self) -> dict[str, Any]:
        return self.acquisitions.stop_current()

    def acquisition(self, acq_id: str) -> dict[str, Any]:
        return self.acquisitions.get(acq_id)

    def acquisition_list(self) -> dict[str, Any]:
        """The current acquisition's id and every acquisition's summary."""
        return {"current": self.aligner.current, "acquisitions": self.acquisitions.list()}

    def metrics(self) -> bytes:
        """Every ``voxloc_*`` metric, in Prometheus' text format."""
        return generate_latest(self.stats.registry)

    # -- threads --------------------------------------------------------------------------
    def _flush(self) -> None:
        """Queue the completed sets in frame order, one thread at a time. A camera thread
        waits here while another is blocked on a full queue (``block``), so backpressure
        reaches every camera, as with one ingest thread."""
        with self._flush_lock:
            for frame_set in self.aligner.pop_ready():
                blocked_s = self.batcher.put(frame_set)
                if blocked_s:
                    self.aligner.pause(blocked_s)

    def _inference_loop(self) -> None:
        """Batches to the engine, results to the publisher. With an engine that hands off
        asynchronously (torch on CUDA) one batch is in flight: the next batch is
        submitted (its copy to the device starts) before the previous one is collected
        and published. Model switches happen with nothing in flight."""
        assert self.publisher is not None
        pending: Submitted | None = None
        while not self._stop.is_set():
            self.publisher.poll_subscriptions()
            if pending is None:
                self.models.current()  # switch to a staged model even while idle
            batch = None
            if pending is None or not self.models.switching:
                cfg = self._config
                idle = pending is None  # with a batch in flight, take what is queued now
                batch = self.batcher.get_batch(
                    cfg.max_batch,
                    cfg.max_delay_ms / 1e3 if idle else 0.0,
                    IDLE_TICK_S if idle else 0.0,
                )
            new = self._submit(batch) if batch is not None and batch.sets else None
            if pending is not None:
                self._complete(pending)
                pending = None
            if new is not None and new.model.engine.async_raw:
                pending = new  # its copy runs while this thread publishes and batches
            elif new is not None:
                self._complete(new)  # a synchronous engine: nothing to overlap
        if pending is not None:
            self._complete(pending)

    def _submit(self, batch: Batch) -> Submitted | None:
        model = self.models.active  # current() switched already if it was due
        assert model is not None
        try:
            cfg = self._config  # threshold and refine as of now
            return submit_batch(model, batch, cfg.threshold, refine=cfg.refine)
        except VoxlocError as exc:
            self._batch_failed(batch, exc)
            return None

    def _complete(self, sub: Submitted) -> None:
        assert self.publisher is not None
        try:
            locs = sub.collect()
        except VoxlocError as exc:
            self._batch_failed(sub.batch, exc)
            return
        self.stats.batch_done(len(sub.batch), sub.busy_s)
        self.publisher.publish(sub.batch, locs, sub.model, sub.threshold, refined=sub.refine)

    def _batch_failed(self, batch: Batch, exc: VoxlocError) -> None:
        log.error(
            "batch of frames %d..%d failed: %s", batch.sets[0].frame, batch.sets[-1].frame, exc
        )
        self.stats.set_dropped("engine_error", len(batch))
        batch.release()

    # -- control plane --------------------------------------------------------------------
    @property
    def config(self) -> RuntimeConfig:
        return self._config

    def update_config(self, changes: dict[str, Any]) -> RuntimeConfig:
        """Validate and apply ``changes``; threshold and refine apply from the next batch."""
        new = RuntimeConfig.model_validate({**self._config.model_dump(), **changes})
        self.batcher.configure(queue_size=new.queue_size, policy=new.drop_policy)
        self.aligner.set_timeout(new.assembly_timeout_ms / 1e3)
        self._config = new
        log.info("config: %s", ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return new

    @property
    def registration(self) -> dict[str, CameraRegistration]:
        return dict(self._registration)

    def update_registration(self, changes: dict[str, dict[str, Any]]) -> int:
        """Replace the registration of the named cameras (all validated before any apply);
        returns the first frame index (current acquisition) registered with it."""
        unknown = sorted(set(changes) - set(self._registration))
        if unknown:
            raise KeyError(f"unknown camera(s) {unknown}; configured: {sorted(self._registration)}")
        regs = dict(self._registration)
        frame = {"frame": (self.settings.stream.height, self.settings.stream.width)}
        for name, fields in changes.items():
            regs[name] = CameraRegistration.model_validate(
                {**regs[name].model_dump(), **fields}, context=frame
            )
        first = self.aligner.set_registration({n: regs[n] for n in changes})
        self._registration = regs
        log.info("registration updated for %s from frame %d on", sorted(changes), first)
        return first

    def stream_health(self) -> dict[str, Any]:
        """``GET /health/stream``: stalled when frames arrive but nothing was published for
        twice the assembly timeout (the reasons per camera beside)."""
        window_s = 2 * self._config.assembly_timeout_ms / 1e3
        return self.stats.stream_health(window_s, self.aligner.sync_states())

    def _counts_by_reason(self) -> dict[str, dict[str, int]]:
        snap = self.stats.snapshot()
        return {"rejects": snap["rejects"], "dropped": snap["assembler"]["dropped"]}

    def _recording_context(self) -> dict[str, Any]:
        """What a recording's metadata JSON holds beside the acquisition's own record."""
        settings = self.settings.model_dump(mode="json", exclude={"api": {"token"}})
        return {
            "registration": {n: r.model_dump() for n, r in self._registration.items()},
            "settings": settings,
        }

    def _table_meta(self, acquisition: str) -> TableMeta:
        active = self.models.active
        geometry = active.engine.info.settings.geometry if active else Geometry()
        s = self.settings.stream
        return TableMeta(
            frames=0,
            height=s.height,
            width=s.width,
            px_nm=geometry.px_nm,
            dz_nm=geometry.dz_nm,
            planes=s.planes,
            source=f"{self.settings.name} acquisition {acquisition}",
            data_type="float32",
            **(
                model_meta(active.engine.info.settings, px_nm=geometry.px_nm, dz_nm=geometry.dz_nm)
                if active
                else {}
            ),
        )

    def load_model(self, name: str) -> tuple[LoadedModel, LoadedModel | None]:
        loaded = self.models.load(name)
        self._use_engine_buffers()
        return loaded

    def _use_engine_buffers(self) -> None:
        """New frame-set buffers come from the active engine (pinned where it is on CUDA)."""
        active = self.models.active
        if active is not None:
            self.aligner.pool.set_allocator(active.engine.host_buffer)

    def add_observer(self, observer: LocalizationObserver) -> None:
        """Call ``observer.observe(msg, frame_set)`` for every published localization message
        (see :class:`~service.types.LocalizationObserver`)."""
        if self.publisher is not None:
            self.publisher.observers.append(observer)
        self._observers.append(observer)

    # -- read -----------------------------------------------------------------------------
    def camera_endpoints(self) -> dict[str, str]:
        """Actual bound endpoints (random ports resolved)."""
        return {c.name: c.endpoint for c in (self.ingest.cameras if self.ingest else [])}

    @property
    def publish_endpoint(self) -> str | None:
        return self.publisher.endpoint if self.publisher else None

    def snapshot(self) -> dict[str, Any]:
        """Everything ``GET /stats`` reports (docs/protocol.md Sec. 5)."""
        out = self.stats.snapshot()
        out["state"] = self.state.value
        active = self.models.active
        out["model"] = active.describe() if active else None
        for cam in self.ingest.cameras if self.ingest else []:
            out["cameras"][cam.name].update(
                endpoint=cam.endpoint, plane=cam.settings.plane, state=cam.state.value
            )
        out["assembler"]["pending"] = self.aligner.depth
        out["assembler"]["acquisition"] = self.aligner.current
        out["assembler"]["cameras"] = self.aligner.sync_states()
        if self.ingest_mode:
            out["assembler"]["ingest_threads"] = self.ingest_mode
        out["batcher"].update(
            depth=self.batcher.depth,
            queue_size=self.batcher.queue_size,
            policy=self.batcher.policy.value,
        )
        pub = self.publisher
        out["publisher"].update(
            endpoint=pub.endpoint if pub else None,
            seq=pub.seq if pub else -1,
            subscribers=pub.subscribers if pub else 0,
        )
        out["observers"] = pub.observer_stats() if pub else {}
        out["stream"] = self.stream_health()
        return out


def _raw_dtypes(settings: ServiceSettings) -> tuple[str, ...]:
    """The camera dtypes the engine will see (both where a camera does not say)."""
    dtypes = {c.dtype for c in settings.cameras}
    if None in dtypes:
        return ("uint16", "float32")
    return tuple(sorted(d for d in dtypes if d is not None))
