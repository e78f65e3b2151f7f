"""Live estimation of each plane's residual lateral offset (issue 6, item 4).

The math of the service's drift observer (its service parts: ``service/drift.py``): it
measures, at the published localizations, where each molecule sits in every registered
plane (:mod:`engines.calibration.plane_offsets`), keeps a sliding window of those
measurements, reports the per-plane offsets to plane 0 (``GET /stats`` under
``observers.drift``, Prometheus ``voxloc_plane_offset_nm``) and optionally feeds them back
into the registration.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engines.calibration.plane_offsets import (
    OffsetEstimate,
    Patches,
    PatchSource,
    PlaneMeasurements,
    cut_patches,
    fit_planes,
    solve_offsets,
)

log = logging.getLogger(__name__)


class DriftSettings(BaseModel):
    """Live plane-offset estimation (``[drift]`` in the service settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="estimate plane offsets in the live service")
    window_locs: int = Field(
        20_000,
        ge=100,
        le=10_000_000,
        description="sliding window: molecules measured most recently",
    )
    every_sets: int = Field(1, ge=1, le=100_000, description="measure every n-th frame set")
    max_locs_per_set: int = Field(256, ge=1, le=100_000)
    queue_sets: int = Field(
        32, ge=1, le=10_000, description="frame sets waiting for the fit; more are dropped"
    )
    patch_px: int = Field(9, ge=5, le=31, description="odd patch side, pixels")
    isolation_px: float = Field(
        5.0, ge=0, le=100, description="skip localizations with a neighbour this close"
    )
    max_shift_px: float = Field(
        2.0, gt=0, le=10, description="fitted centre this far from the seed: rejected"
    )
    max_busy_fraction: float = Field(
        0.5, gt=0, le=1, description="share of one core the fitting may use"
    )
    update_sets: int = Field(
        20, ge=1, le=100_000, description="re-estimate after this many measured frame sets"
    )
    feedback: bool = Field(False, description="shift the registration by confident estimates")
    feedback_min_locs: int = Field(2000, ge=10)
    feedback_min_nm: float = Field(5.0, ge=0, description="smaller offsets are left alone")
    feedback_settle_sets: int = Field(
        200,
        ge=0,
        description="frame sets ignored after a feedback when the pipeline cannot "
        "say from which frame on the correction applies",
    )

    @model_validator(mode="after")
    def _odd_patch(self) -> DriftSettings:
        if self.patch_px % 2 == 0:
            raise ValueError(f"patch_px must be odd, got {self.patch_px}")
        return self


# -- live estimator ------------------------------------------------------------------------
class _Metrics:
    """Prometheus mirror of the estimate, in the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.offset = Gauge(
            "voxloc_plane_offset_nm",
            "residual lateral offset to plane 0",
            ["plane", "axis"],
            registry=registry,
        )
        self.se = Gauge(
            "voxloc_plane_offset_se_nm",
            "standard error of the plane offset",
            ["plane", "axis"],
            registry=registry,
        )
        self.locs = Gauge(
            "voxloc_plane_offset_locs",
            "localizations behind the plane offset",
            ["plane"],
            registry=registry,
        )
        self.dropped = Counter(
            "voxloc_drift_dropped_sets",
            "frame sets not measured: the drift queue was full",
            registry=registry,
        )
        self.feedbacks = Counter(
            "voxloc_drift_feedbacks",
            "registration corrections by the drift estimator",
            registry=registry,
        )

    def clear(self) -> None:
        for gauge in (self.offset, self.se, self.locs):
            gauge.clear()

    def update(self, est: OffsetEstimate) -> None:
        for k in range(len(est.offsets_nm)):
            for i, axis in enumerate("xy"):
                self.offset.labels(str(k), axis).set(est.offsets_nm[k, i])
                self.se.labels(str(k), axis).set(est.se_nm[k, i])
            self.locs.labels(str(k)).set(int(est.locs[k]))


class DriftEstimator:
    """Sliding-window plane-offset estimator; a service localization observer.

    ``observe(msg, planes)`` (inference thread) cuts patches around the isolated
    localizations, notes the resampling fractions of the current registration
    (``affines()``, ``(P, 2, 3)``: the fits model the registration's bilinear resampling,
    which otherwise moves the peak of in-focus spots by up to ~8 nm) and queues them
    (bounded: a full queue drops the set and counts it). A worker thread fits them,
    keeps the last ``window_locs`` measured localizations and re-estimates. With
    ``feedback`` on, a confident estimate is handed to ``correct(offsets_nm)``: the
    pipeline shifts the registration and returns the first frame index registered with
    the shift. The window restarts and the frame sets before that index (registered
    before, still in the queues) are skipped; if ``correct`` returns None, the next
    ``feedback_settle_sets`` frame sets are.
    """

    name = "drift"

    def __init__(
        self,
        settings: DriftSettings | None = None,
        *,
        px_nm: float,
        planes: int,
        registry: CollectorRegistry | None = None,
        correct: Callable[[np.ndarray], int | None] | None = None,
        affines: Callable[[], np.ndarray | None] | None = None,
    ) -> None:
        if px_nm <= 0 or planes < 2:
            raise ValueError(
                f"need px_nm > 0 and at least 2 planes, got px_nm {px_nm}, planes {planes}"
            )
        self.settings = settings or DriftSettings()
        self.px_nm, self.planes = float(px_nm), int(planes)
        self._correct = correct
        self._affines = affines
        self._metrics = _Metrics(registry) if registry is not None else None
        self._queue: queue.Queue[Patches] = queue.Queue(self.settings.queue_sets)
        self._window: deque[PlaneMeasurements] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: OffsetEstimate | None = None
        self._count = {"seen": 0, "measured": 0, "dropped": 0, "feedbacks": 0}
        self._window_locs = 0
        self._pending = 0  # measured sets since the last estimate
        self._settle = 0  # frame sets still to skip after a feedback
        self._first_frame = 0  # frame sets before this index are skipped

    # -- inference thread -----------------------------------------------------------------
    def observe(
        self, msg: Any, planes: np.ndarray | PatchSource, affines: np.ndarray | None = None
    ) -> None:
        """``msg``: a :class:`service.wire.LocsMessage`; ``planes`` its registered
        ``(P, H, W)`` set (or a :class:`PatchSource` that registers only the patches);
        ``affines`` the registration they went through (default: ``affines()``)."""
        self._count["seen"] += 1
        if self._settle > 0 or msg.frame < self._first_frame:
            self._settle = max(self._settle - 1, 0)
            return
        if (self._count["seen"] - 1) % self.settings.every_sets or len(msg.locs.xyz_nm) == 0:
            return
        if planes.shape[0] != self.planes:
            raise ValueError(
                f"expected {self.planes} planes, got a frame set of shape {planes.shape}"
            )
        s = self.settings
        patches = cut_patches(
            planes,
            msg.locs.xyz_nm[:, :2],
            px_nm=self.px_nm,
            patch_px=s.patch_px,
            isolation_px=s.isolation_px,
            max_locs=s.max_locs_per_set,
            affines=affines
            if affines is not None
            else (self._affines() if self._affines else None),
        )
        if len(patches):
            self.submit(patches)

    def submit(self, patches: Patches) -> None:
        """Queue the patches of one frame set for the worker (dropped when full)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="voxloc-drift", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(patches)
        except queue.Full:
            self._count["dropped"] += 1
            if self._metrics:
                self._metrics.dropped.inc()

    # -- worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # keep measuring the next sets; a bad batch is logged
                log.exception("drift estimator step failed")

    def _step(self) -> None:
        try:
            parts = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            if self._pending:  # the stream paused: bring the estimate up to date
                self.estimate()
            return
        t0 = time.perf_counter()
        while len(parts) < self.settings.queue_sets:
            try:
                parts.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._measure(parts)
        # stay below max_busy_fraction of one core: sets arriving meanwhile may be dropped
        busy = 1.0 / self.settings.max_busy_fraction - 1.0
        self._stop.wait((time.perf_counter() - t0) * busy)

    def _measure(self, parts: list[Patches]) -> None:
        """Fit the patches of several frame sets at once; the window slides per set."""
        meas = fit_planes(
            Patches.concat(parts), px_nm=self.px_nm, max_shift_px=self.settings.max_shift_px
        )
        bounds = np.cumsum([len(p) for p in parts])[:-1]
        with self._lock:
            for rel, var in zip(
                np.split(meas.rel_nm, bounds), np.split(meas.var_nm2, bounds), strict=True
            ):
                self._window.append(PlaneMeasurements(rel, var))
                self._window_locs += len(rel)
            while self._window_locs - len(self._window[0]) >= self.settings.window_locs:
                self._window_locs -= len(self._window.popleft())
            self._count["measured"] += len(parts)
            self._pending += len(parts)
        if self._pending >= self.settings.update_sets:
            self.estimate()

    def estimate(self) -> OffsetEstimate:
        """Re-estimate from the window now (the worker does this as data arrives)."""
        with self._lock:
            meas = PlaneMeasurements.concat(list(self._window), self.planes)
            included = self._pending
        est = solve_offsets(meas)
        with self._lock:
            self._last = est
            self._pending = max(self._pending - included, 0)
        if self._metrics:
            self._metrics.update(est)
        if self.settings.feedback and self._correct is not None:
            self._maybe_correct(est, self._correct)
        return est

    def _maybe_correct(
        self, est: OffsetEstimate, correct: Callable[[np.ndarray], int | None]
    ) -> None:
        s = self.settings
        if est.molecules < s.feedback_min_locs or not np.isfinite(est.offsets_nm).all():
            return
        size = np.hypot(*est.offsets_nm.T)
        confident = (size > s.feedback_min_nm) & (size > 3.0 * np.hypot(*est.se_nm.T))
        if not confident[1:].any():
            return
        offsets = np.where(confident[:, None], est.offsets_nm, 0.0)
        log.info(
            "drift feedback: shifting planes %s by %s nm (from %d localizations)",
            np.flatnonzero(confident).tolist(),
            np.round(offsets[confident], 1).tolist(),
            est.molecules,
        )
        first_frame = correct(offsets)
        if first_frame is None:
            self.reset(settle_sets=s.feedback_settle_sets)
        else:
            self.reset(first_frame=first_frame)
        self._count["feedbacks"] += 1
        if self._metrics:
            self._metrics.feedbacks.inc()

    # -- control --------------------------------------------------------------------------
    def reset(self, *, settle_sets: int = 0, first_frame: int = 0) -> None:
        """Empty the window and the queue; then skip the next ``settle_sets`` frame sets
        and those before frame index ``first_frame``."""
        self._settle, self._first_frame = settle_sets, first_frame
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            self._window.clear()
            self._window_locs = 0
            self._pending = 0
            self._last = None  # it described the registration before the reset
        if self._metrics:
            self._metrics.clear()

    def stats(self) -> dict[str, Any]:
        """What ``GET /stats`` shows under ``observers.drift``."""
        with self._lock:
            last, window, pending = self._last, self._window_locs, self._pending
        out: dict[str, Any] = {
            "window_locs": window,
            "sets_seen": self._count["seen"],
            "sets_measured": self._count["measured"],
            "sets_dropped": self._count["dropped"],
            "queued": self._queue.qsize(),
            "sets_not_estimated": pending,
            "feedback": self.settings.feedback,
            "feedbacks": self._count["feedbacks"],
        }
        out.update(last.to_dict() if last else {"planes": None})
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)


def registration_changes(
    registration: dict[str, Any], planes: dict[str, int], offsets_nm: np.ndarray, px_nm: float
) -> dict[str, dict[str, Any]]:
    """``PUT /registration`` changes that cancel ``offsets_nm`` ``(P, 2)``.

    A plane whose molecules appear displaced by ``+offset`` comes from a camera mapped
    ``offset`` too far: the translation of its affine (reference pixels) is reduced by
    ``offset / px_nm``. Cameras of planes without an offset are left out.
    """
    out = {}
    for name, reg in registration.items():
        off = offsets_nm[planes[name]]
        if np.all(np.isfinite(off)) and np.any(off != 0):
            affine = np.array(reg.affine, dtype=np.float64)
            affine[:, 2] -= off / px_nm
            out[name] = {"affine": affine.tolist()}
    return out
