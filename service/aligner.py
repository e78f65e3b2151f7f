"""Aligner: registers every camera image into the reference plane (affine, bilinear),
converts ADU to model units, and assembles the planes of one time point into a
:class:`~service.types.FrameSet`, released in frame order.

Affine convention (docs/protocol.md Sec. 4): ``A`` (2x3, pixels) maps camera pixel
coordinates ``(x, y)`` to reference coordinates; pixel ``(i, j)`` has its centre at
``(j + 0.5, i + 0.5)``. The warp samples the camera image at ``A^-1`` of each reference
pixel centre; the sampling map is computed once per registration.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.settings import CameraRegistration
from service.stats import ServiceStats
from service.types import FrameSet
from service.wire import Reject

log = logging.getLogger(__name__)

RECENT_RELEASED = 4096  # released frame indices remembered to tell duplicates from stale


class PlaneWarp:
    """Precomputed bilinear resampling of one camera into the reference plane."""

    def __init__(
        self,
        *,
        affine: np.ndarray,
        height: int,
        width: int,
        gain_adu: float = 1.0,
        baseline_adu: float = 0.0,
    ) -> None:
        a = np.asarray(affine, dtype=np.float64).reshape(2, 3)
        self.height, self.width = int(height), int(width)
        self.gain_adu = np.float32(gain_adu)
        self.baseline_adu = np.float32(baseline_adu)
        self.identity = bool(np.array_equal(a, [[1, 0, 0], [0, 1, 0]]))
        if not self.identity:
            self._index, self._weight = self._bilinear_map(a)

    @classmethod
    def from_registration(cls, reg: CameraRegistration, height: int, width: int) -> PlaneWarp:
        return cls(
            affine=np.asarray(reg.affine),
            height=height,
            width=width,
            gain_adu=reg.gain_adu,
            baseline_adu=reg.baseline_adu,
        )

    def _bilinear_map(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.height, self.width
        inv = np.linalg.inv(a[:, :2])
        yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        ref = np.stack([xx.ravel() - a[0, 2], yy.ravel() - a[1, 2]])
        cam_x, cam_y = inv @ ref
        col = np.clip(cam_x - 0.5, 0.0, w - 1.0)
        row = np.clip(cam_y - 0.5, 0.0, h - 1.0)
        j0 = np.minimum(np.floor(col), max(w - 2, 0)).astype(np.int64)
        i0 = np.minimum(np.floor(row), max(h - 2, 0)).astype(np.int64)
        fx, fy = col - j0, row - i0
        j1, i1 = np.minimum(j0 + 1, w - 1), np.minimum(i0 + 1, h - 1)
        index = np.stack([i0 * w + j0, i0 * w + j1, i1 * w + j0, i1 * w + j1])
        weight = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
        return index, weight.astype(np.float32)

    def apply(self, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Registered ``(H, W)`` float32 image in model units, ``(adu - baseline) / gain``."""
        if out is None:
            out = np.empty((self.height, self.width), np.float32)
        if self.identity:
            np.subtract(image, self.baseline_adu, out=out, dtype=np.float32)
        else:
            flat = np.asarray(image, dtype=np.float32).ravel()
            acc = self._weight[0] * flat[self._index[0]]
            for k in range(1, 4):
                acc += self._weight[k] * flat[self._index[k]]
            np.subtract(acc.reshape(out.shape), self.baseline_adu, out=out)
        out /= self.gain_adu
        return out


@dataclass
class _Pending:
    planes: np.ndarray  # (P, H, W) float32
    have: np.ndarray  # (P,) bool
    t_first: float  # assembler clock when the first plane arrived
    t_cam_ns: int
    t_recv_ns: int


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
    ) -> None:
        self.planes, self.height, self.width = planes, height, width
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

    def slot(self, plane: int, frame: int, t_cam_ns: int) -> np.ndarray:
        """The ``(H, W)`` float32 buffer to register plane ``plane`` of ``frame`` into;
        call after :meth:`check` returned None, then :meth:`commit`."""
        p = self._pending.get(frame)
        if p is None:
            p = _Pending(
                np.empty((self.planes, self.height, self.width), np.float32),
                np.zeros(self.planes, bool),
                self.now(),
                t_cam_ns,
                0,
            )
            self._pending[frame] = p
            if self._next is None or (frame < self._next and not self._released_any):
                self._next = frame
        return p.planes[plane]

    def commit(self, plane: int, frame: int, t_cam_ns: int) -> None:
        p = self._pending[frame]
        p.have[plane] = True
        p.t_cam_ns = min(p.t_cam_ns, t_cam_ns)
        p.t_recv_ns = time.time_ns()

    def pop_ready(self) -> list[FrameSet]:
        """Complete sets in frame order; drops heads that timed out or overflowed."""
        out: list[FrameSet] = []
        now = self.now()
        while self._next is not None and self._pending:
            head = self._pending.get(self._next)
            if head is not None and head.have.all():
                out.append(self._release(self._next))
                continue
            if len(self._pending) > self.window:
                self._drop_head(head, "overflow")
                continue
            start = head.t_first if head else min(p.t_first for p in self._pending.values())
            if now - start < self.timeout_s:
                break
            self._drop_head(head, "timeout")
        return out

    def _release(self, frame: int) -> FrameSet:
        p = self._pending.pop(frame)
        self._next = frame + 1
        self._released_any = True
        self._recent.add(frame)
        self._recent_order.append(frame)
        if len(self._recent_order) > RECENT_RELEASED:
            self._recent.discard(self._recent_order.popleft())
        self.stats.set_assembled()
        return FrameSet(frame, p.planes, p.t_cam_ns, p.t_recv_ns)

    def _drop_head(self, head: _Pending | None, reason: str) -> None:
        assert self._next is not None
        if head is None:  # nothing of these frames arrived: jump to the next pending set
            first = min(self._pending)
            self.stats.set_dropped("missing", first - self._next)
            log.debug("frames %d..%d: no plane arrived", self._next, first - 1)
            self._next = first
        else:
            del self._pending[self._next]
            self.stats.set_dropped(reason)
            log.info(
                "frame set %d dropped (%s): planes %s missing",
                self._next,
                reason,
                np.flatnonzero(~head.have).tolist(),
            )
            self._next += 1
        self._released_any = True
