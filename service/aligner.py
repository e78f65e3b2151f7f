"""Aligner: assembles the planes of one time point into a :class:`~service.types.FrameSet`,
released in frame order, per acquisition, and owns the cameras' registration.

Each camera payload is copied once, as sent (uint16 or float32), into its plane of the
set's buffer (:mod:`service.slots`); no pixel arithmetic happens here. A released set
carries the registration snapshot (:mod:`service.registration`) current at its release,
and the engine applies it on its device; an update therefore applies from a named frame
set on (:meth:`Aligner.set_registration` returns it).

Each acquisition has its own camera synchronisation (:mod:`service.sync`) and frame
pointer, and frame indices count from 0 in each. When a new one begins, the sets still
being assembled in the previous one complete (or time out) and are released first. The
assembly of one acquisition's sets is :class:`~service.assembler.FrameAssembler`.
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

from service.assembler import FrameAssembler, PendingSet
from service.registration import PlaneWarp, Registration
from service.settings import CameraRegistration, CameraSettings
from service.slots import SlotPool
from service.stats import ServiceStats
from service.sync import CameraSync, Placed
from service.types import FrameSet
from service.wire import FrameMessage, Reject

__all__ = ["Aligner", "PlaneWarp"]

log = logging.getLogger(__name__)


class Accepted(NamedTuple):
    """What :meth:`Aligner.accept_many` did: a set completed, and the camera's lead."""

    completed: bool
    lead: int


class _Job(NamedTuple):
    """One frame of ``camera`` reserved in its set's buffer: copy ``msg.image`` into
    ``view``, then finish it."""

    camera: str
    run: _Run
    pending: PendingSet
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
        have something) and the camera's :meth:`lead` after these frames."""
        completed, leads = self.accept_from([(camera, m) for m in msgs])
        return Accepted(completed, leads[camera])

    def accept_from(self, frames: list[tuple[str, FrameMessage]]) -> tuple[bool, dict[str, int]]:
        """:meth:`accept_many` of frames of any cameras (``(camera, message)`` in arrival
        order): whether a set was completed, and the lead of each camera that sent.

        The frames of one call are placed under one hold of the lock, their payloads
        copied into the sets' buffers outside it (numpy releases the GIL for it, so
        other threads copy in parallel), then finished under a second hold."""
        t_recv_ns = time.time_ns()  # every frame of the call has arrived by now
        jobs: list[_Job] = []
        with self._lock:
            for camera, msg in frames:
                self._place(camera, msg, jobs)
            if not jobs:
                return False, self._leads(frames)
        for job in jobs:
            np.copyto(job.view, job.msg.image)
        with self._lock:
            return self._finish(jobs, t_recv_ns), self._leads(frames)

    def _place(self, camera: str, msg: FrameMessage, jobs: list[_Job]) -> None:
        run = self._run_for(msg.acquisition)
        if run is None:
            self._stats.reject(camera, Reject.STALE.value)  # its acquisition ended
            return
        s = run.sync.place_in_line(camera, msg.frame, msg.t_ns)
        if s is not None:  # the common case
            self._reserve(run, camera, s, msg, jobs)
            return
        placed = run.sync.place(camera, msg.frame, msg.t_ns, msg)
        self._reserve_placed(run, camera, placed, jobs)

    def _leads(self, frames: list[tuple[str, FrameMessage]]) -> dict[str, int]:
        return self._runs[-1].sync.leads({c for c, _ in frames})

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
        jobs.append(_Job(camera, run, p, view, set_index, m))

    def _finish(self, jobs: list[_Job], t_recv_ns: int | None = None) -> bool:
        completed = False
        now = self.now()
        newest: dict[str, tuple[int, int]] = {}  # camera -> (frames, newest set index)
        for job in jobs:
            run, m = job.run, job.msg
            completed |= run.assembler.finish(
                job.pending, m.plane, job.set_index, m.t_ns, job.view, t_recv_ns
            )
            run.last_frame = now
            run.cameras.add(job.camera)
            n, top = newest.get(job.camera, (0, job.set_index))
            newest[job.camera] = (n + 1, max(top, job.set_index))
        for camera, (n, top) in newest.items():
            self._stats.frames_ok(camera, n, top)
        return completed

    def _assemble(self, run: _Run, camera: str, placed: Placed[FrameMessage]) -> bool:
        """Reserve, copy and finish under the caller's lock (frames given up by sync)."""
        jobs: list[_Job] = []
        self._reserve_placed(run, camera, placed, jobs)
        if not jobs:
            return False
        for job in jobs:
            np.copyto(job.view, job.msg.image)
        return self._finish(jobs)

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
