"""Frame-set assembly of one acquisition: collects the planes of each frame index into a
slot of the pool (:mod:`service.slots`) and releases complete sets in frame order.

A set waits for its missing planes up to the assembly timeout; a set that times out, or
the oldest set when too many are pending, is dropped and counted by reason. The
:class:`~service.aligner.Aligner` keeps one :class:`FrameAssembler` per acquisition and
drives it under its lock; a plane's payload may be copied in outside that lock
(:meth:`FrameAssembler.reserve`, then :meth:`FrameAssembler.finish`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.slots import SlotPool
from service.stats import ServiceStats
from service.types import FrameSet
from service.wire import Reject

__all__ = ["RECENT_RELEASED", "FrameAssembler"]

log = logging.getLogger(__name__)

RECENT_RELEASED = 4096  # released frame indices remembered to tell duplicates from stale


@dataclass
class PendingSet:
    """A frame set being assembled: its buffer and which planes have arrived."""

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
        self._pending: dict[int, PendingSet] = {}
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
            p = PendingSet(
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
    ) -> tuple[PendingSet, np.ndarray]:
        """:meth:`slot` for a copy made outside the caller's lock: the plane counts as
        arrived (a second copy is a duplicate) but not as complete until :meth:`finish`."""
        view = self.slot(plane, frame, t_cam_ns, dtype)
        p = self._pending[frame]
        p.have[plane] = True
        p.writers += 1
        return p, view

    def finish(
        self,
        p: PendingSet,
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

    def _drop_head(self, head: PendingSet | None, reason: str) -> None:
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
