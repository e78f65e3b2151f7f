"""Camera synchronisation: maps each camera's frame indices onto the frame-set index the
cameras agree on, so that no single camera can move or wedge the assembly.

Every camera ``c`` has an index offset ``o_c``; its frame ``f`` belongs to frame set
``s = f - o_c``. Offsets start at 0, so cameras that count together from 0 need nothing
more. The consensus head is the newest set index accepted from a synchronised camera.

A frame is *in line* when ``|s - head| <= window`` and it is not for a set that was
already released or dropped (unless it re-sends one of the camera's last
``RESEND_SPAN`` frames: a duplicate). A camera whose frames are not in line (its
numbering restarted or jumped, or it started late and counts from 0) is
re-synchronised (docs/protocol.md Sec. 2.4):

1. For each such frame, the set it belongs to is estimated from the other synchronised
   cameras that sent within ``active_s``: by exposure timestamp ``t_ns`` where one of
   their recent frames lies within a quarter of their frame interval and no other within
   three quarters (unambiguous), or it lies one or two intervals (within a quarter)
   after their newest frame (it arrived first); else, where its index is within one of
   another camera's newest index, the two count together (same offset); else the newest
   set index of the other cameras (arrival order).
2. ``confirm`` consecutive frames giving the same offset (within one) adopt it: the
   offset timestamps gave where any frame was matched by time; without timestamp
   evidence, an offset within one of another camera's is taken equal to it.
   The frames held meanwhile are replayed with it, so nothing is lost. Held frames that
   do not confirm (a single bogus index), or that nothing follows within ``active_s``,
   are given up: under the old offset the assembler judges them (a late or duplicate
   frame); far from the head they are counted as ``desync``.
3. Where no other camera is synchronised and active, the frames continue the numbering
   after the newest set: cameras that all restart at once do not collide with sets
   already released.

A camera that has not confirmed an offset within ``give_up`` frames is reported as
desynchronised until it does.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

RECENT_FRAMES = 64  # per camera: (set index, t_ns) pairs kept for timestamp matching
RESEND_SPAN = 8  # an index among a camera's last frames sent again is a duplicate
MAX_AHEAD = 2  # frame intervals a timestamp may lie past a camera's newest frame


@dataclass
class Placed(Generic[T]):
    """Frames to assemble, as ``(set index, item)`` in order, and how many were given up
    as ``desync`` (held with an index far from every other camera's)."""

    sets: list[tuple[int, T]] = field(default_factory=list)
    desync: int = 0


class SyncState(str, enum.Enum):
    SYNCED = "synced"  # frames map onto the consensus
    RESYNCING = "resyncing"  # out of line, confirming a new offset
    DESYNCHRONISED = "desynchronised"  # out of line for longer than ``give_up`` frames


@dataclass
class _Held(Generic[T]):
    frame: int
    t_ns: int
    item: T
    since: float  # assembly clock when it was held


@dataclass
class _Camera(Generic[T]):
    offset: int = 0
    state: SyncState = SyncState.SYNCED
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RECENT_FRAMES))
    last_arrival: float = float("-inf")
    held: list[_Held[T]] = field(default_factory=list)
    candidates: list[tuple[int, bool]] = field(default_factory=list)  # (offset, by time)
    out_of_line: int = 0  # frames since the camera left the consensus
    resyncs: int = 0

    def newest(self) -> int | None:
        return self.recent[-1][0] if self.recent else None

    def interval_ns(self) -> float | None:
        """Median exposure interval of the recent frames, ns (None if unknown)."""
        if len(self.recent) < 3:
            return None
        steps = np.diff([t for _, t in self.recent])
        sets = np.diff([s for s, _ in self.recent])
        ok = (sets > 0) & (steps > 0)
        return float(np.median(steps[ok] / sets[ok])) if ok.any() else None


class CameraSync(Generic[T]):
    """Places camera frames onto set indices; see the module docstring for the rule."""

    def __init__(
        self,
        cameras: list[str],
        *,
        window: int,
        active_s: float,
        clock: Callable[[], float],
        released_upto: Callable[[], int],
        confirm: int = 3,
        give_up: int = 32,
    ) -> None:
        self.window = window
        self.active_s = active_s
        self.confirm = confirm
        self.give_up = give_up
        self._clock = clock
        self._released_upto = released_upto  # highest set index released or dropped
        self._cams: dict[str, _Camera[T]] = {name: _Camera() for name in cameras}
        self.head: int | None = None

    def states(self) -> dict[str, dict[str, object]]:
        return {
            name: {"state": c.state.value, "offset": c.offset, "resyncs": c.resyncs}
            for name, c in self._cams.items()
        }

    def lead(self, camera: str) -> int:
        """How many sets ``camera`` is ahead of the slowest other synchronised camera that
        sent within ``active_s`` (0 when none or it is not ahead)."""
        return self.leads((camera,))[camera]

    def leads(self, cameras: Iterable[str]) -> dict[str, int]:
        """:meth:`lead` of each of ``cameras``, with one look at the clock and the
        other cameras (the ingest asks for every camera that sent, every round)."""
        now = self._clock()
        newest = {
            name: c.recent[-1][0]
            for name, c in self._cams.items()
            if c.state is SyncState.SYNCED and c.recent and now - c.last_arrival <= self.active_s
        }
        out: dict[str, int] = {}
        for camera in cameras:
            recent = self._cams[camera].recent
            others = [n for name, n in newest.items() if name != camera]
            out[camera] = max(recent[-1][0] - min(others), 0) if recent and others else 0
        return out

    def desynchronised(self) -> list[str]:
        return [n for n, c in self._cams.items() if c.state is SyncState.DESYNCHRONISED]

    def place_in_line(self, camera: str, frame: int, t_ns: int) -> int | None:
        """The common case of :meth:`place` without building its result: a synchronised
        camera with nothing held sent a frame in line; it is accepted and its set index
        returned. None: nothing was done, call :meth:`place`."""
        cam = self._cams[camera]
        s = frame - cam.offset
        if cam.state is SyncState.SYNCED and not cam.held and self._in_line(cam, s):
            self._accept(cam, s, t_ns, self._clock())
            return s
        return None

    def place(self, camera: str, frame: int, t_ns: int, item: T) -> Placed[T]:
        """Where to assemble this frame, and frames held before that it releases."""
        s = self.place_in_line(camera, frame, t_ns)
        if s is not None:  # the common case: nothing held to settle
            return Placed([(s, item)])
        cam = self._cams[camera]
        now = self._clock()
        s = frame - cam.offset
        if self._in_line(cam, s):
            out = self._give_up(cam)
            self._back_in_line(cam)
            self._accept(cam, s, t_ns, now)
            out.sets.append((s, item))
            return out
        return self._out_of_line(camera, cam, frame, t_ns, item, now)

    def expire(self) -> dict[str, Placed[T]]:
        """Give up frames held for longer than ``active_s`` (a camera that sent one or
        two out-of-line frames and then nothing)."""
        now = self._clock()
        out: dict[str, Placed[T]] = {}
        for name, cam in self._cams.items():
            if cam.held and now - cam.held[0].since > self.active_s:
                out[name] = self._give_up(cam)
                cam.candidates.clear()
        return out

    def _give_up(self, cam: _Camera[T]) -> Placed[T]:
        """Held frames under the camera's current offset: the assembler judges those
        near the head (a late or duplicate frame); the others are ``desync``."""
        out: Placed[T] = Placed()
        for h in cam.held:
            s = h.frame - cam.offset
            if self.head is None or abs(s - self.head) <= self.window:
                out.sets.append((s, h.item))
            else:
                out.desync += 1
        cam.held.clear()
        return out

    def _in_line(self, cam: _Camera[T], s: int) -> bool:
        if self.head is not None and abs(s - self.head) > self.window:
            return False
        if s > self._released_upto():
            return True
        return any(s == r for r, _ in list(cam.recent)[-RESEND_SPAN:])  # a duplicate

    def _back_in_line(self, cam: _Camera[T]) -> None:
        cam.held.clear()
        cam.candidates.clear()
        cam.out_of_line = 0
        cam.state = SyncState.SYNCED

    def _accept(self, cam: _Camera[T], s: int, t_ns: int, now: float) -> None:
        cam.recent.append((s, t_ns))
        cam.last_arrival = now
        if self.head is None or s > self.head:
            self.head = s

    def _out_of_line(
        self, camera: str, cam: _Camera[T], frame: int, t_ns: int, item: T, now: float
    ) -> Placed[T]:
        cam.out_of_line += 1
        cam.state = SyncState.DESYNCHRONISED if cam.out_of_line >= self.give_up else cam.state
        if cam.state is SyncState.SYNCED:
            cam.state = SyncState.RESYNCING
        found = self._expected_set(camera, frame, t_ns, now)
        if found is None:  # rule 3, anchored on the first held frame
            head = self.head if self.head is not None else -1
            first = cam.held[0].frame if cam.held else frame
            cand, by_time = first - (max(head, self._released_upto()) + 1), False
        else:
            cand, by_time = frame - found[0], found[1]
        out: Placed[T] = Placed()
        if cam.candidates and abs(cand - cam.candidates[-1][0]) > 1:
            out = self._give_up(cam)  # they did not confirm
            cam.candidates.clear()
        cam.held.append(_Held(frame, t_ns, item, now))
        cam.candidates.append((cand, by_time))
        if len(cam.candidates) < self.confirm:
            return out
        offset = self._adopted_offset(camera, cam.candidates)
        log.info("camera %s re-synchronised: index offset %d -> %d", camera, cam.offset, offset)
        cam.offset, cam.resyncs = offset, cam.resyncs + 1
        held = list(cam.held)
        self._back_in_line(cam)
        for h in held:
            self._accept(cam, h.frame - offset, h.t_ns, now)
            out.sets.append((h.frame - offset, h.item))
        return out

    def _adopted_offset(self, camera: str, candidates: list[tuple[int, bool]]) -> int:
        """Rule 2: the confirmed offset: where timestamps decided any frame, theirs;
        otherwise snapped to another camera's within one."""
        timed = [c for c, by_time in candidates if by_time]
        if timed:
            return max(sorted(set(timed)), key=timed.count)  # by exposure time: exact
        offset = int(np.median([c for c, _ in candidates]))
        for name, other in self._cams.items():
            if name != camera and other.state is SyncState.SYNCED and other.recent:
                if abs(other.offset - offset) <= 1:
                    return other.offset
        return offset

    def _expected_set(
        self, camera: str, frame: int, t_ns: int, now: float
    ) -> tuple[int, bool] | None:
        """Rule 1: the set index of this frame and whether timestamps decided it; None
        where no other camera is synchronised and active."""
        others = [
            c
            for n, c in self._cams.items()
            if n != camera
            and c.state is SyncState.SYNCED
            and c.recent
            and now - c.last_arrival <= self.active_s
        ]
        if not others:
            return None
        by_time = [s for c in others if (s := _match_time(c, t_ns)) is not None]
        if by_time:
            return max(set(by_time), key=by_time.count), True
        for c in others:
            c_new = c.newest()
            if c_new is not None and abs(frame - (c_new + c.offset)) <= 1:
                return frame - c.offset, False
        newest = max(others, key=lambda c: c.last_arrival).newest()
        assert newest is not None
        return newest, False


def _match_time(cam: _Camera[T], t_ns: int) -> int | None:
    """Set index of ``cam``'s recent frame exposed at ``t_ns``, if unambiguous."""
    interval = cam.interval_ns()
    if t_ns <= 0 or interval is None or interval <= 0:
        return None
    newest_s, newest_t = cam.recent[-1]
    ahead = round((t_ns - newest_t) / interval)
    if 1 <= ahead <= MAX_AHEAD:  # exposed after the camera's newest frame arrived
        if abs(t_ns - newest_t - ahead * interval) > 0.25 * interval:
            return None
        return newest_s + ahead
    d = np.array([abs(t - t_ns) for _, t in cam.recent], dtype=np.float64)
    order = np.argsort(d)
    if d[order[0]] > 0.25 * interval:
        return None
    if len(order) > 1 and d[order[1]] < 0.75 * interval:
        return None
    return cam.recent[int(order[0])][0]
