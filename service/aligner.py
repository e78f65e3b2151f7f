"""Aligner: assembles the planes of one time point into a :class:`~service.types.FrameSet`,
released in frame order, per acquisition, and owns the cameras' registration.

Each camera payload is copied once, as sent (uint16 or float32), into its plane of the
set's buffer (:mod:`service.slots`); no pixel arithmetic happens here. A released set
carries the registration snapshot (:mod:`service.registration`) current at its release,
and the engine applies it on its device; an update therefore applies from a named frame
set on (:meth:`Aligner.set_registration` returns it).

Each acquisition has its own camera synchronisation (:mod:`service.sync`) and frame
pointer, and frame indices count from 0 in each. When a new one begins, the sets still
being assembled in the previous one complete (or time out) and are released first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from service.registration import PlaneWarp, Registration
from service.settings import CameraRegistration, CameraSettings
from service.slots import SlotPool
from service.stats import ServiceStats
from service.sync import CameraSync, Placed
from service.types import FrameSet
from service.wire import FrameMessage, Reject

__all__ = ["Aligner", "FrameAssembler", "PlaneWarp"]

log = logging.getLogger(__name__)

RECENT_RELEASED = 4096  # released frame indices remembered to tell duplicates from stale


@dataclass
class _Pending:
    planes: np.ndarray  # (P, H, W) camera dtype, a slot of the pool
    have: np.ndarray  # (P,) bool
    t_first: float  # assembler clock when the first plane arrived
    t_cam_ns: int
    t_recv_ns: int
    count: int = 0  # planes committed (the set is complete at ``planes``)
    writers: int = 0  # planes being copied in outside the lock (:meth:`reserve`)
    dropped: bool = False  # dropped while a copy was in flight: the writer frees it


class FrameAssembler:
    """Collects planes per frame index and releases complete sets in frame order.

    The head of the line (the next frame index) waits for its missing planes up to
    ``timeout_s`` after its first plane arrived; a head of which nothing arrived waits
    that long after the first plane of any later set. More than ``window`` sets pending
    drops the head. Every dropped set is counted in ``stats`` by reason.
    """

    def __init__(
        self,
        *,
        planes: int,
        height: int,
        width: int,
        timeout_s: float,
        window: int,
        stats: ServiceStats,
        clock: Callable[[], float] = time.monotonic,
        pool: SlotPool | None = None,
    ) -> None:
        self.planes, self.height, self.width = planes, height, width
        self.pool = pool or SlotPool(planes=planes, height=height, width=width)
        self.timeout_s = timeout_s
        self.window = window
        self.stats = stats
        self._clock = clock
        self._paused_s = 0.0
        self._pending: dict[int, _Pending] = {}
        self._next: int | None = None
        self._released_any = False
        self._recent: set[int] = set()  # recently released frame indices
        self._recent_order: deque[int] = deque()

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def released_upto(self) -> int:
        """Every set index up to this one was released or dropped (-1: none yet)."""
        return -1 if self._next is None or not self._released_any else self._next - 1

    def now(self) -> float:
        """Assembly clock: wall time minus the time the pipeline spent blocked downstream."""
        return self._clock() - self._paused_s

    def pause(self, seconds: float) -> None:
        """Exclude ``seconds`` spent blocked on a full queue from every timeout."""
        self._paused_s += seconds

    def check(self, plane: int, frame: int) -> Reject | None:
        """Why this plane cannot be accepted (``stale``/``duplicate``), or None."""
        if self._next is not None and frame < self._next and self._released_any:
            # every plane of a released set arrived, so this one is a second copy
            return Reject.DUPLICATE if frame in self._recent else Reject.STALE
        pending = self._pending.get(frame)
        if pending is not None and pending.have[plane]:
            return Reject.DUPLICATE
        return None

    def slot(
        self, plane: int, frame: int, t_cam_ns: int, dtype: np.dtype | str = "float32"
    ) -> np.ndarray:
        """The ``(H, W)`` buffer to copy plane ``plane`` of ``frame`` into (its camera's
        ``dtype``); call after :meth:`check` returned None, then :meth:`commit`.

        A set whose cameras send different dtypes is kept in float32 (uint16 converts
        exactly)."""
        p = self._pending.get(frame)
        if p is None:
            p = _Pending(
                self.pool.take(dtype),
                np.zeros(self.planes, bool),
                self.now(),
                t_cam_ns,
                0,
            )
            self._pending[frame] = p
            if self._next is None or (frame < self._next and not self._released_any):
                self._next = frame
        elif p.planes.dtype != dtype and p.planes.dtype != np.float32:
            wider = self.pool.take(np.dtype(np.float32))
            wider[p.have] = p.planes[p.have]
            if not p.writers:  # else a copy into it is in flight: let it be collected
                self.pool.give(p.planes)
            p.planes = wider
        return p.planes[plane]

    def reserve(
        self, plane: int, frame: int, t_cam_ns: int, dtype: np.dtype
    ) -> tuple[_Pending, np.ndarray]:
        """:meth:`slot` for a copy made outside the caller's lock: the plane counts as
        arrived (a second copy is a duplicate) but not as complete until :meth:`finish`."""
        view = self.slot(plane, frame, t_cam_ns, dtype)
        p = self._pending[frame]
        p.have[plane] = True
        p.writers += 1
        return p, view

    def finish(
        self,
        p: _Pending,
        plane: int,
        frame: int,
        t_cam_ns: int,
        view: np.ndarray,
        t_recv_ns: int | None = None,
    ) -> bool:
        """The copy into ``view`` is done; True when that completed its set.
        ``t_recv_ns``: when the plane arrived (default: now)."""
        p.writers -= 1
        if p.dropped or self._pending.get(frame) is not p:
            if p.dropped and not p.writers:
                self.pool.give(p.planes)
            return False
        if view.dtype != p.planes.dtype:
            # the set was widened to float32 meanwhile (only a uint16 set is widened, and
            # its float32 replacement is never replaced again: a view of another dtype
            # than the set's is a view of the buffer it had before)
            p.planes[plane] = view
        p.count += 1
        if t_cam_ns < p.t_cam_ns:
            p.t_cam_ns = t_cam_ns
        p.t_recv_ns = time.time_ns() if t_recv_ns is None else t_recv_ns
        return p.count == self.planes

    def commit(self, plane: int, frame: int, t_cam_ns: int) -> bool:
        """Mark the plane arrived; True when that completed its set."""
        p = self._pending[frame]
        p.have[plane] = True
        p.count += 1
        p.t_cam_ns = min(p.t_cam_ns, t_cam_ns)
        p.t_recv_ns = time.time_ns()
        return p.count == self.planes

    def pop_ready(self, acquisition: str = "") -> list[FrameSet]:
        """Complete sets in frame order; drops heads that timed out or overflowed."""
        out: list[FrameSet] = []
        now = self.now()
        while self._next is not None and self._pending:
            head = self._pending.get(self._next)
            if head is not None and head.count == self.planes:
                out.append(self._release(self._next, acquisition))
                continue
            if len(self._pending) > self.window:
                self._drop_head(head, "overflow")
                continue
            start = head.t_first if head else min(p.t_first for p in self._pending.values())
            if now - start < self.timeout_s:
                break
            self._drop_head(head, "timeout")
        if out:
            self.stats.set_assembled(len(out))
        return out

    def _release(self, frame: int, acquisition: str) -> FrameSet:
        p = self._pending.pop(frame)
        self._next = frame + 1
        self._released_any = True
        self._recent.add(frame)
        self._recent_order.append(frame)
        if len(self._recent_order) > RECENT_RELEASED:
            self._recent.discard(self._recent_order.popleft())
        return FrameSet(
            frame, p.planes, p.t_cam_ns, p.t_recv_ns, acquisition, give_back=self.pool.give
        )

    def _drop_head(self, head: _Pending | None, reason: str) -> None:
        assert self._next is not None
        if head is None:  # nothing of these frames arrived: jump to the next pending set
            first = min(self._pending)
            self.stats.set_dropped("missing", first - self._next)
            log.debug("frames %d..%d: no plane arrived", self._next, first - 1)
            self._next = first
        else:
            del self._pending[self._next]
            if head.writers:
                head.dropped = True  # the last writer gives the buffer back
            else:
                self.pool.give(head.planes)
            self.stats.set_dropped(reason)
            log.info(
                "frame set %d dropped (%s): planes %s missing",
                self._next,
                reason,
                np.flatnonzero(~head.have).tolist(),
            )
            self._next += 1
        self._released_any = True


class Accepted(NamedTuple):
    """What :meth:`Aligner.accept_many` did: a set completed, and the camera's lead."""

    completed: bool
    lead: int


class _Job(NamedTuple):
    """One frame reserved in its set's buffer: copy ``msg.image`` into ``view``, then
    finish it."""

    run: _Run
    pending: _Pending
    view: np.ndarray
    set_index: int
    msg: FrameMessage


@dataclass
class _Run:
    """The assembly state of one acquisition."""

    acquisition: str
    sync: CameraSync[FrameMessage]
    assembler: FrameAssembler
    last_frame: float  # assembly clock of its newest accepted frame
    cameras: set[str] = field(default_factory=set)  # cameras that sent frames to it


class Aligner:
    """Registration and frame-set assembly for every camera, per acquisition.

    The ingest calls :meth:`accept` and :meth:`pop_ready`; the control plane calls
    :meth:`begin`, :meth:`set_registration` and :meth:`set_timeout`. A lock makes each
    call atomic (pixel copies run outside Python's GIL but inside the lock; see
    :meth:`accept`).
    """

    def __init__(
        self,
        *,
        cameras: list[CameraSettings],
        planes: int,
        height: int,
        width: int,
        timeout_s: float,
        window: int,
        stats: ServiceStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cameras = [c.name for c in cameras]
        self._shape = (planes, height, width)
        self._timeout_s = timeout_s
        self._window = window
        self._stats = stats
        self._clock = clock
        self._paused_s = 0.0
        self._lock = threading.RLock()
        self.pool = SlotPool(planes=planes, height=height, width=width)
        self._registration = Registration(
            {c.name: c.registration() for c in cameras},
            {c.name: c.plane for c in cameras},
            height=height,
            width=width,
        )
        self._runs: list[_Run] = []
        self._ended: deque[str] = deque(maxlen=64)  # acquisitions whose assembly finished
        self.begin("")

    # -- control plane ---------------------------------------------------------------------
    @property
    def current(self) -> str:
        """The acquisition frames without an acquisition id belong to."""
        return self._runs[-1].acquisition

    def begin(self, acquisition: str) -> None:
        """Start assembling ``acquisition`` (frame indices from 0); the previous one drains."""
        with self._lock:
            self._begin(acquisition)

    def _begin(self, acquisition: str) -> None:
        planes, height, width = self._shape
        asm = FrameAssembler(
            planes=planes,
            height=height,
            width=width,
            timeout_s=self._timeout_s,
            window=self._window,
            stats=self._stats,
            clock=self.now,
            pool=self.pool,
        )
        sync: CameraSync[FrameMessage] = CameraSync(
            self._cameras,
            window=self._window,
            active_s=self.active_s,
            clock=self.now,
            released_upto=lambda: asm.released_upto,
        )
        self._runs.append(_Run(acquisition, sync, asm, self.now()))
        log.info("acquisition %r: assembly begins", acquisition)

    @property
    def registration(self) -> Registration:
        return self._registration

    def set_registration(self, regs: dict[str, CameraRegistration]) -> int:
        """Register with ``regs`` (merged per camera) every frame set of the current
        acquisition from the returned frame index on (the sets released before keep the
        registration they were released with)."""
        new = self._registration.replace(regs)
        new.device  # noqa: B018 - build (and validate) outside the lock
        with self._lock:
            self._registration = new
            return self._runs[-1].assembler.released_upto + 1

    def warp(self, camera: str) -> PlaneWarp:
        return self._registration.warp(camera)

    def set_timeout(self, timeout_s: float) -> None:
        with self._lock:
            self._timeout_s = timeout_s
            for run in self._runs:
                run.assembler.timeout_s = timeout_s
                run.sync.active_s = self.active_s

    @property
    def active_s(self) -> float:
        """A camera that sent nothing for this long is not taken as a reference."""
        return max(2 * self._timeout_s, 0.5)

    # -- assembly clock ----------------------------------------------------------------------
    def now(self) -> float:
        """Wall time minus the time the pipeline spent blocked downstream."""
        return self._clock() - self._paused_s

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_s += seconds

    @property
    def depth(self) -> int:
        return sum(r.assembler.depth for r in self._runs)

    # -- ingest thread -------------------------------------------------------------------------
    def accept(self, camera: str, msg: FrameMessage) -> bool:
        """:meth:`accept_many` of one frame; True when it completed a set."""
        return self.accept_many(camera, [msg]).completed

    def accept_many(self, camera: str, msgs: list[FrameMessage]) -> Accepted:
        """Place and assemble validated frames of one camera, in arrival order; rejects
        are counted. Returns whether a frame set was completed (:meth:`pop_ready` may
        have something) and the camera's :meth:`lead` after these frames.

        The frames of one call are placed under one hold of the lock, their payloads
        copied into the sets' buffers outside it (numpy releases the GIL for it, so the
        cameras' threads copy in parallel), then finished under a second hold."""
        t_recv_ns = time.time_ns()  # every frame of the call has arrived by now
        jobs: list[_Job] = []
        with self._lock:
            for msg in msgs:
                run = self._run_for(msg.acquisition)
                if run is None:
                    self._stats.reject(camera, Reject.STALE.value)  # its acquisition ended
                    continue
                s = run.sync.place_in_line(camera, msg.frame, msg.t_ns)
                if s is not None:  # the common case
                    self._reserve(run, camera, s, msg, jobs)
                    continue
                placed = run.sync.place(camera, msg.frame, msg.t_ns, msg)
                self._reserve_placed(run, camera, placed, jobs)
            if not jobs:
                return Accepted(False, self._runs[-1].sync.lead(camera))
        for job in jobs:
            np.copyto(job.view, job.msg.image)
        with self._lock:
            completed = self._finish(camera, jobs, t_recv_ns)
            return Accepted(completed, self._runs[-1].sync.lead(camera))

    def _run_for(self, acquisition: str | None) -> _Run | None:
        if acquisition is None:
            return self._runs[-1]
        for run in reversed(self._runs):
            if run.acquisition == acquisition:
                return run
        if acquisition in self._ended:
            return None
        self._begin(acquisition)  # a camera started a new acquisition
        return self._runs[-1]

    def _reserve_placed(
        self, run: _Run, camera: str, placed: Placed[FrameMessage], jobs: list[_Job]
    ) -> None:
        for _ in range(placed.desync):
            self._stats.reject(camera, Reject.DESYNC.value)
        for set_index, m in placed.sets:
            self._reserve(run, camera, set_index, m, jobs)

    def _reserve(
        self, run: _Run, camera: str, set_index: int, m: FrameMessage, jobs: list[_Job]
    ) -> None:
        asm = run.assembler
        reason = asm.check(m.plane, set_index)
        if reason is not None:
            self._stats.reject(camera, reason.value)
            return
        p, view = asm.reserve(m.plane, set_index, m.t_ns, m.image.dtype)
        jobs.append(_Job(run, p, view, set_index, m))

    def _finish(self, camera: str, jobs: list[_Job], t_recv_ns: int | None = None) -> bool:
        completed = False
        now = self.now()
        for job in jobs:
            run, m = job.run, job.msg
            completed |= run.assembler.finish(
                job.pending, m.plane, job.set_index, m.t_ns, job.view, t_recv_ns
            )
            run.last_frame = now
            run.cameras.add(camera)
        self._stats.frames_ok(camera, len(jobs), max(job.set_index for job in jobs))
        return completed

    def _assemble(self, run: _Run, camera: str, placed: Placed[FrameMessage]) -> bool:
        """Reserve, copy and finish under the caller's lock (frames given up by sync)."""
        jobs: list[_Job] = []
        self._reserve_placed(run, camera, placed, jobs)
        if not jobs:
            return False
        for job in jobs:
            np.copyto(job.view, job.msg.image)
        return self._finish(camera, jobs)

    def pop_ready(self) -> list[FrameSet]:
        """Complete sets in order: the oldest acquisition's first, each carrying the
        registration it is to be registered with."""
        with self._lock:
            out = self._pop_ready()
            reg = self._registration
        for fs in out:
            fs.registration = reg
        return out

    def _pop_ready(self) -> list[FrameSet]:
        out: list[FrameSet] = []
        for run in list(self._runs):
            for camera, placed in run.sync.expire().items():
                self._assemble(run, camera, placed)
            out.extend(run.assembler.pop_ready(run.acquisition))
            if run is self._runs[-1]:
                break
            # each camera sends in order: once every one has moved on to a newer
            # acquisition, nothing more of this one comes (or it has been silent a while)
            moved_on = set().union(*(r.cameras for r in self._runs[self._runs.index(run) + 1 :]))
            idle = self.now() - run.last_frame >= self.active_s
            if run.assembler.depth or not (idle or moved_on >= set(self._cameras)):
                break
            self._runs.remove(run)
            self._ended.append(run.acquisition)
            log.info("acquisition %r: assembly finished", run.acquisition)
        return out

    def lead(self, camera: str) -> int:
        """Sets ``camera`` is ahead of the slowest active camera (current acquisition)."""
        with self._lock:
            return self._runs[-1].sync.lead(camera)

    @property
    def max_lead(self) -> int:
        """A camera this far ahead waits for the others (its frames stay in its socket)."""
        return self._window // 4

    def sync_states(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return self._runs[-1].sync.states()
