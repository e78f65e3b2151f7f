"""Stream a pymmcore-plus acquisition (MDA) into voxloc (docs/micromanager.md).

A lab adds three lines to its acquisition script::

    from clients.micromanager import CameraPlanes, MDAStream

    stream = MDAStream(CameraPlanes({"Camera-1": 0, "Camera-2": 1, "Camera-3": 2, "Camera-4": 3}))
    stream.attach(core)          # core: pymmcore_plus.CMMCorePlus (or UniMMCore)
    core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 20000}))

:class:`MDAStream` listens to the core's MDA signals: ``sequenceStarted`` opens one
:class:`~clients.camera.CameraPublisher` per plane, ``frameReady`` cuts every image into
its planes (a :class:`CameraPlanes` or :class:`SensorRegions` layout) and publishes them
with the time point ``event.index["t"]`` as frame index, and ``sequenceFinished`` flushes
and closes the publishers and logs what was sent. The acquisition never waits for
voxloc: when the service does not keep up, images are dropped at the publisher, counted
in :attr:`MDAStream.stats` and reported by a log warning.

This module imports neither pymmcore-plus nor torch: it only touches ``core.mda.events``
and the arrays and events the signals carry.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from clients.camera import DEFAULT_BASE_PORT, DEFAULT_SNDHWM, CameraPublisher, default_endpoint
from engines.errors import FormatError, VoxlocError

log = logging.getLogger(__name__)

Region = tuple[int, int, int, int]  # (x, y, width, height) in sensor pixels, as MM's ROI
_TIME_AXIS = "t"
_CAMERA_AXIS = "cam"  # added by pymmcore-plus for Multi Camera channels


class PlaneLayout(Protocol):
    """How camera images map to voxloc planes."""

    @property
    def planes(self) -> tuple[int, ...]: ...

    def split(self, image: np.ndarray, camera_device: str) -> list[tuple[int, np.ndarray]]:
        """``(plane, (H, W) image)`` pairs of one camera image; empty: not ours."""
        ...


@dataclass(frozen=True)
class CameraPlanes:
    """Several cameras, one plane each: Micro-Manager camera label -> plane index.

    Images of cameras not in the map (a focus camera, say) are ignored and counted.
    """

    cameras: Mapping[str, int]

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("CameraPlanes needs at least one camera label -> plane")
        planes = list(self.cameras.values())
        if len(set(planes)) != len(planes) or min(planes) < 0:
            raise ValueError(f"planes must be distinct and >= 0, got {dict(self.cameras)}")

    @property
    def planes(self) -> tuple[int, ...]:
        return tuple(sorted(self.cameras.values()))

    def split(self, image: np.ndarray, camera_device: str) -> list[tuple[int, np.ndarray]]:
        plane = self.cameras.get(camera_device)
        return [] if plane is None else [(plane, image)]


@dataclass(frozen=True)
class SensorRegions:
    """One camera whose sensor holds several planes side by side (an image splitter).

    Args:
        regions: ``(x, y, width, height)`` of each plane on the sensor, in pixels, in
            plane order (plane 0 = lowest focal position). All the same size.
        camera: the camera label to take images from; None: any camera.

    A mirrored sub-image needs no special case: the camera's registration affine
    (``voxloc calibrate registration``) can flip it.
    """

    regions: Sequence[Region]
    camera: str | None = None

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError("SensorRegions needs at least one region")
        sizes = {(int(r[2]), int(r[3])) for r in self.regions}
        if len(sizes) != 1:
            raise ValueError(f"all regions must have the same width x height, got {sizes}")
        for r in self.regions:
            if len(r) != 4 or min(r[:2]) < 0 or min(r[2:]) <= 0:
                raise ValueError(f"region must be (x, y, width, height) >= 0, got {r}")

    @classmethod
    def grid(
        cls,
        height: int,
        width: int,
        *,
        rows: int = 2,
        cols: int = 2,
        order: Sequence[int] | None = None,
        camera: str | None = None,
    ) -> SensorRegions:
        """A ``height x width`` sensor cut into ``rows x cols`` equal tiles.

        ``order[k]`` is the tile (row-major: 0 = top left) that holds plane ``k``;
        default: plane ``k`` is tile ``k``.
        """
        if height % rows or width % cols:
            raise ValueError(f"a {height}x{width} sensor does not split into {rows}x{cols}")
        h, w = height // rows, width // cols
        tiles = [(c * w, r * h, w, h) for r in range(rows) for c in range(cols)]
        order = list(range(len(tiles))) if order is None else list(order)
        if sorted(order) != list(range(len(tiles))):
            raise ValueError(f"order must be a permutation of 0..{len(tiles) - 1}, got {order}")
        return cls(tuple(tiles[t] for t in order), camera)

    @property
    def planes(self) -> tuple[int, ...]:
        return tuple(range(len(self.regions)))

    def split(self, image: np.ndarray, camera_device: str) -> list[tuple[int, np.ndarray]]:
        if self.camera is not None and camera_device != self.camera:
            return []
        out = []
        for plane, (x, y, w, h) in enumerate(self.regions):
            if image.ndim != 2 or y + h > image.shape[0] or x + w > image.shape[1]:
                raise FormatError(
                    f"camera {camera_device!r}: region {(x, y, w, h)} of plane {plane} does not "
                    f"fit in its {'x'.join(map(str, image.shape))} image"
                )
            out.append((plane, image[y : y + h, x : x + w]))
        return out


class StreamState(str, enum.Enum):
    IDLE = "idle"  # between acquisitions
    STREAMING = "streaming"  # an MDA runs and its images go to voxloc
    FAILED = "failed"  # this acquisition cannot be streamed (see ``last_error``)


@dataclass
class MDAStreamStats:
    """Counts over the life of an :class:`MDAStream`; ``dropped`` by plane."""

    sequences: int = 0
    images: int = 0  # frameReady calls seen while streaming
    published: int = 0  # plane images queued for the service
    dropped: Counter = field(default_factory=Counter)  # service not keeping up
    ignored: int = 0  # images of cameras the layout does not name
    errors: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class MDAStream:
    """Publishes the images of pymmcore-plus MDAs to a running ``voxloc serve``.

    Args:
        layout: :class:`CameraPlanes` or :class:`SensorRegions`.
        host: the machine running ``voxloc serve``; plane ``k`` goes to camera ``cam<k>``
            on port ``base_port + k`` (the service's defaults).
        endpoints: plane -> endpoint, overriding ``host`` / ``base_port``.
        names: plane -> service camera name (default ``cam<k>``).
        sndhwm: images queued per plane before images are dropped.
        continue_frames: number a new acquisition's frames after the previous one's
            instead of from 0, so a running service accepts it without a restart.
    """

    def __init__(
        self,
        layout: PlaneLayout,
        *,
        host: str = "127.0.0.1",
        base_port: int = DEFAULT_BASE_PORT,
        endpoints: Mapping[int, str] | None = None,
        names: Mapping[int, str] | None = None,
        sndhwm: int = DEFAULT_SNDHWM,
        continue_frames: bool = False,
    ) -> None:
        self.layout = layout
        planes = layout.planes
        self.endpoints = {
            k: (endpoints or {}).get(k) or default_endpoint(k, host, base_port) for k in planes
        }
        self.names = {k: (names or {}).get(k) or f"cam{k}" for k in planes}
        self.sndhwm = sndhwm
        self.continue_frames = continue_frames
        self.state = StreamState.IDLE
        self.stats = MDAStreamStats()
        self.last_error: str | None = None
        self.publishers: dict[int, CameraPublisher] = {}
        self._running = 0  # attached cores whose MDA runs now
        self._at_start = (0, 0)  # (published, dropped) when this acquisition started
        self._offset: dict[int, int] = dict.fromkeys(planes, 0)  # added to event.index["t"]
        self._next_frame: dict[int, int] = dict.fromkeys(planes, 0)
        self._lock = threading.RLock()
        self._cores: list[Any] = []

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, core: Any) -> MDAStream:
        """Follow ``core``'s MDAs (several cores may share one stream, one plane each)."""
        events = core.mda.events
        events.sequenceStarted.connect(self.on_sequence_started)
        events.frameReady.connect(self.on_frame_ready)
        events.sequenceFinished.connect(self.on_sequence_finished)
        self._cores.append(core)
        return self

    def detach(self, core: Any) -> None:
        events = core.mda.events
        events.sequenceStarted.disconnect(self.on_sequence_started)
        events.frameReady.disconnect(self.on_frame_ready)
        events.sequenceFinished.disconnect(self.on_sequence_finished)
        self._cores.remove(core)

    def close(self) -> None:
        """Detach from every core and close open publishers."""
        for core in list(self._cores):
            self.detach(core)
        with self._lock:
            self._close_publishers()
            self._running = 0
            self.state = StreamState.IDLE

    # -- signal handlers ------------------------------------------------------------------
    def on_sequence_started(self, sequence: Any, _meta: Any = None) -> None:
        with self._lock:
            self._running += 1
            if self._running > 1:
                return  # another core's MDA opened the publishers already
            self.stats.sequences += 1
            self._at_start = (self.stats.published, self.stats.dropped_total)
            self._offset = {
                k: self._next_frame[k] if self.continue_frames else 0 for k in self._offset
            }
            error = _sequence_error(sequence)
            if error is not None:
                self._fail(error)
                return
            try:
                self.publishers = {
                    k: CameraPublisher(self.endpoints[k], self.names[k], k, sndhwm=self.sndhwm)
                    for k in self.layout.planes
                }
            except VoxlocError as exc:
                self._close_publishers()
                self._fail(str(exc))
                return
            self.state, self.last_error = StreamState.STREAMING, None
            log.info(
                "voxloc: streaming planes %s to %s",
                list(self.publishers),
                ", ".join(self.endpoints.values()),
            )

    def on_frame_ready(self, image: np.ndarray, event: Any, meta: Mapping | None = None) -> None:
        if self.state is not StreamState.STREAMING:
            return
        t_ns = time.time_ns()
        camera = str((meta or {}).get("camera_device") or "")
        with self._lock:  # cores run their MDAs on their own threads
            try:
                t = int(event.index.get(_TIME_AXIS, 0))
                parts = self.layout.split(np.asarray(image), camera)
                if not parts:
                    self._ignore(camera)
                    return
                self.stats.images += 1
                for plane, sub in parts:
                    self._publish(plane, self._offset[plane] + t, sub, t_ns)
            except VoxlocError as exc:
                self.stats.errors += 1
                self._fail(str(exc))

    def on_sequence_finished(self, _sequence: Any = None) -> None:
        with self._lock:
            self._running = max(self._running - 1, 0)
            if self._running:
                return
            self._close_publishers()
            if self.state is StreamState.STREAMING:
                self.state = StreamState.IDLE
            self._report()

    # -- internals ------------------------------------------------------------------------
    def _publish(self, plane: int, frame: int, image: np.ndarray, t_ns: int) -> None:
        pub = self.publishers[plane]
        sent = pub.publish(frame, _frame_dtype(image, pub.camera), t_ns)
        self._next_frame[plane] = max(self._next_frame[plane], frame + 1)
        if sent:
            self.stats.published += 1
        else:
            self.stats.dropped[plane] += 1
            if self.stats.dropped_total in (1, 10, 100) or self.stats.dropped_total % 1000 == 0:
                log.warning(
                    "voxloc is not keeping up with the acquisition: %d images dropped so far "
                    "(frame %d, plane %d); the acquisition goes on, see the service's /stats",
                    self.stats.dropped_total,
                    frame,
                    plane,
                )

    def _ignore(self, camera: str) -> None:
        self.stats.ignored += 1
        if self.stats.ignored == 1:
            log.warning(
                "voxloc: ignoring images of camera %r, which the layout does not name (%s)",
                camera,
                self.layout,
            )

    def _fail(self, message: str) -> None:
        self.state, self.last_error = StreamState.FAILED, message
        log.error("voxloc: not streaming this acquisition: %s", message)

    def _close_publishers(self) -> None:
        for pub in self.publishers.values():
            pub.close()  # flushes what is still queued (linger)
        self.publishers = {}

    def _report(self) -> None:
        sent = self.stats.published - self._at_start[0]
        dropped = self.stats.dropped_total - self._at_start[1]
        if dropped:
            log.warning(
                "voxloc: acquisition done, %d plane images sent, %d dropped because the "
                "service did not keep up (all acquisitions, by plane: %s)",
                sent,
                dropped,
                dict(self.stats.dropped),
            )
        else:
            log.info("voxloc: acquisition done, %d plane images sent, none dropped", sent)


def _sequence_error(sequence: Any) -> str | None:
    """Why an MDA cannot be streamed: voxloc needs one image per camera per time point."""
    sizes = getattr(sequence, "sizes", {}) or {}
    extra = {str(getattr(k, "value", k)): n for k, n in sizes.items() if n > 1}
    extra.pop(_TIME_AXIS, None)
    extra.pop(_CAMERA_AXIS, None)
    if extra:
        return (
            "expected a time-lapse MDA (axis 't' only: one exposure per time point), "
            f"got further axes {extra}; run z-stacks, channels or positions as separate "
            "time-lapse acquisitions"
        )
    return None


def _frame_dtype(image: np.ndarray, camera: str) -> np.ndarray:
    """uint16 / float32 as the wire wants; 8-bit cameras widen, float64 narrows."""
    if image.dtype == np.uint8:
        return image.astype(np.uint16)
    if image.dtype == np.float64:
        return image.astype(np.float32)
    if image.dtype not in (np.uint16, np.float32):
        raise FormatError(
            f"camera {camera!r}: expected uint8, uint16 or float pixels, got {image.dtype}"
        )
    return image
