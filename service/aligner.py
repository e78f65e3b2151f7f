"""Aligner: registers every camera image into the reference plane (affine, bilinear),
converts ADU to model units, and assembles the planes of one time point into a
:class:`~service.types.FrameSet`, released in frame order, per acquisition.

Each acquisition has its own camera synchronisation (:mod:`service.sync`) and frame
pointer, and frame indices count from 0 in each. When a new one begins, the sets still
being assembled in the previous one complete (or time out) and are released first.

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
from dataclasses import dataclass, field

import numpy as np

from service.settings import CameraRegistration, CameraSettings
from service.stats import ServiceStats
from service.sync import CameraSync, Placed
from service.types import FrameSet
from service.wire import FrameMessage, Reject

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

    def pop_ready(self, acquisition: str = "") -> list[FrameSet]:
        """Complete sets in frame order; drops heads that timed out or overflowed."""
        out: list[FrameSet] = []
        now = self.now()
        while self._next is not None and self._pending:
            head = self._pending.get(self._next)
            if head is not None and head.have.all():
                out.append(self._release(self._next, acquisition))
                continue
            if len(self._pending) > self.window:
                self._drop_head(head, "overflow")
                continue
            start = head.t_first if head else min(p.t_first for p in self._pending.values())
            if now - start < self.timeout_s:
                break
            self._drop_head(head, "timeout")
        return out

    def _release(self, frame: int, acquisition: str) -> FrameSet:
        p = self._pending.pop(frame)
        self._next = frame + 1
        self._released_any = True
        self._recent.add(frame)
        self._recent_order.append(frame)
        if len(self._recent_order) > RECENT_RELEASED:
            self._recent.discard(self._recent_order.popleft())
        self.stats.set_assembled()
        return FrameSet(frame, p.planes, p.t_cam_ns, p.t_recv_ns, acquisition)

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

    The ingest thread calls :meth:`accept` and :meth:`pop_ready`; the control plane
    calls :meth:`begin`, :meth:`set_registration` and :meth:`set_timeout` (each swaps an
    immutable value the ingest thread reads).
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
        self._warps = {
            c.name: PlaneWarp.from_registration(c.registration(), height, width) for c in cameras
        }
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
        planes, height, width = self._shape
        asm = FrameAssembler(
            planes=planes,
            height=height,
            width=width,
            timeout_s=self._timeout_s,
            window=self._window,
            stats=self._stats,
            clock=self.now,
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

    def set_registration(self, regs: dict[str, CameraRegistration]) -> None:
        _, height, width = self._shape
        warps = {n: PlaneWarp.from_registration(r, height, width) for n, r in regs.items()}
        self._warps = {**self._warps, **warps}

    def warp(self, camera: str) -> PlaneWarp:
        return self._warps[camera]

    def set_timeout(self, timeout_s: float) -> None:
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
        self._paused_s += seconds

    @property
    def depth(self) -> int:
        return sum(r.assembler.depth for r in self._runs)

    # -- ingest thread -------------------------------------------------------------------------
    def accept(self, camera: str, msg: FrameMessage) -> None:
        """Place, register and assemble one validated camera frame; rejects are counted."""
        run = self._run_for(msg.acquisition)
        if run is None:
            self._stats.reject(camera, Reject.STALE.value)  # its acquisition has ended
            return
        self._assemble(run, camera, run.sync.place(camera, msg.frame, msg.t_ns, msg))

    def _run_for(self, acquisition: str | None) -> _Run | None:
        if acquisition is None:
            return self._runs[-1]
        for run in reversed(self._runs):
            if run.acquisition == acquisition:
                return run
        if acquisition in self._ended:
            return None
        self.begin(acquisition)  # a camera started a new acquisition
        return self._runs[-1]

    def _assemble(self, run: _Run, camera: str, placed: Placed[FrameMessage]) -> None:
        for _ in range(placed.desync):
            self._stats.reject(camera, Reject.DESYNC.value)
        asm = run.assembler
        for set_index, m in placed.sets:
            reason = asm.check(m.plane, set_index)
            if reason is not None:
                self._stats.reject(camera, reason.value)
                continue
            self._warps[camera].apply(m.image, out=asm.slot(m.plane, set_index, m.t_ns))
            asm.commit(m.plane, set_index, m.t_ns)
            run.last_frame = self.now()
            run.cameras.add(camera)
            self._stats.frame_ok(camera, set_index)

    def pop_ready(self) -> list[FrameSet]:
        """Complete sets in order: the oldest acquisition's first."""
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

    def sync_states(self) -> dict[str, dict[str, object]]:
        return self._runs[-1].sync.states()
