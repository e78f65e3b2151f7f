"""Camera producers: push camera images to the service (docs/protocol.md Sec. 1-2.1).

:class:`CameraPublisher` is what microscope control software calls once per exposure::

    pub = CameraPublisher("tcp://127.0.0.1:5550", "cam0", plane=0)
    for i, image in enumerate(acquisition):
        pub.publish(i, image, time.time_ns())   # returns at once; False = dropped, counted
    pub.close()

It owns a ZeroMQ ``PUSH`` socket connected to the service's ``PULL`` endpoint for this
camera. The send queue is bounded (``SNDHWM``) and every send is non-blocking: when the
service does not keep up, the queue fills and further images are dropped *here* and
counted in :attr:`CameraPublisher.stats`, so the caller's acquisition loop never waits.

:class:`SimulatedSource` and :class:`TiffSource` produce frame sets for ``voxloc camera``;
:func:`run_cameras` paces them at a frame rate through one publisher per plane.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zmq

from engines.errors import FormatError, StreamError
from service.wire import FRAME_DTYPES, encode_frame

if TYPE_CHECKING:  # the scene simulator needs torch; an acquisition PC has none
    from clients.scene import Scene

log = logging.getLogger(__name__)

DEFAULT_SNDHWM = 8
DEFAULT_BASE_PORT = 5550


def default_endpoint(
    plane: int, host: str = "127.0.0.1", base_port: int = DEFAULT_BASE_PORT
) -> str:
    """The service's default endpoint of camera ``plane`` (``cam<k>`` on port 5550 + k)."""
    return f"tcp://{host}:{base_port + plane}"


class CameraState(str, enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class DropReason(str, enum.Enum):
    QUEUE_FULL = "queue_full"  # send queue at its high-water mark: the service is behind


@dataclass
class PublisherStats:
    """What one publisher did; ``dropped`` counts by :class:`DropReason` value."""

    published: int = 0
    dropped: Counter = field(default_factory=Counter)
    last_frame: int | None = None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


if TYPE_CHECKING:
    from service.curve import CurveClientKeys  # duck-typed: CurveClientKeys.apply(sock)


class CameraPublisher:
    """Publishes one camera's images; see the module docstring.

    Args:
        endpoint: the service's endpoint for this camera, e.g. ``tcp://127.0.0.1:5550``.
        camera: camera name, as configured in the service (``cam0`` ...).
        plane: plane index of this camera (0 = lowest focal position).
        shape: ``(height, width)`` every image must have; default: the first image's.
        dtype: ``"uint16"`` or ``"float32"``; default: the first image's.
        sndhwm: send-queue length in messages; beyond it images are dropped.
        linger_ms: how long :meth:`close` waits to flush queued images.
        curve: the service's public key and this camera's key pair, for a service with
            ``[security] curve = true`` (``CurveClientKeys.from_files``; docs/deploy.md).
        acquisition: the acquisition the images belong to (frame indices from 0 in it);
            None: the service's current one. :meth:`new_acquisition` starts another.
    """

    def __init__(
        self,
        endpoint: str,
        camera: str,
        plane: int,
        *,
        shape: tuple[int, int] | None = None,
        dtype: str | None = None,
        sndhwm: int = DEFAULT_SNDHWM,
        linger_ms: int = 1000,
        context: zmq.Context | None = None,
        curve: CurveClientKeys | None = None,
        acquisition: str | None = None,
    ) -> None:
        if not camera:
            raise ValueError("camera name must not be empty")
        if plane < 0:
            raise ValueError(f"plane must be >= 0, got {plane}")
        if dtype is not None and dtype not in FRAME_DTYPES:
            raise ValueError(f"dtype must be one of {FRAME_DTYPES}, got {dtype!r}")
        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1, got {sndhwm}")
        self.endpoint, self.camera, self.plane = endpoint, camera, int(plane)
        self.shape = tuple(shape) if shape is not None else None
        self.dtype = dtype
        self.acquisition = acquisition
        self.stats = PublisherStats()
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        if curve is not None:
            curve.apply(self._sock)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            raise StreamError(f"camera {camera!r}: cannot connect to {endpoint!r}: {exc}") from exc
        self.state = CameraState.OPEN
        self._lock = threading.Lock()

    def publish(self, frame_index: int, image: np.ndarray, t_ns: int | None = None) -> bool:
        """Queue one image; True if queued, False if dropped (counted in :attr:`stats`).

        Args:
            frame_index: time-point index, from 0 per acquisition, strictly increasing.
            image: ``(H, W)`` uint16 (ADU) or float32 pixels; copied, so the caller may
                reuse its buffer at once.
            t_ns: exposure timestamp, ns since the epoch (default: now).

        Raises:
            FormatError: wrong shape/dtype, non-finite pixels or a frame index that does
                not increase. StreamError: the publisher is closed.
        """
        img = self._validate(frame_index, image)
        t = time.time_ns() if t_ns is None else int(t_ns)
        parts = encode_frame(self.camera, self.plane, frame_index, img, t, self.acquisition)
        with self._lock:
            self.stats.last_frame = int(frame_index)
            try:
                self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.stats.dropped[DropReason.QUEUE_FULL.value] += 1
                if self.stats.dropped_total in (1, 10, 100) or self.stats.dropped_total % 1000 == 0:
                    log.warning(
                        "camera %s: service not keeping up, %d frames dropped so far",
                        self.camera,
                        self.stats.dropped_total,
                    )
                return False
            self.stats.published += 1
            return True

    def new_acquisition(self, acquisition: str) -> None:
        """Images from now on belong to ``acquisition``; frame indices start again at 0.
        Every camera of the set-up must switch (the service assembles each acquisition on
        its own; its previous one completes first)."""
        with self._lock:
            self.acquisition = acquisition
            self.stats.last_frame = None

    def _validate(self, frame_index: int, image: np.ndarray) -> np.ndarray:
        if self.state is not CameraState.OPEN:
            raise StreamError(f"camera {self.camera!r}: publisher is closed")
        if not isinstance(frame_index, (int, np.integer)) or frame_index < 0:
            raise FormatError(
                f"camera {self.camera!r}: frame index must be an int >= 0, got {frame_index!r}"
            )
        last = self.stats.last_frame
        if last is not None and frame_index <= last:
            raise FormatError(
                f"camera {self.camera!r}: frame index must increase, got {frame_index} after {last}"
            )
        arr = np.asarray(image)
        if arr.ndim != 2 or arr.dtype.name not in FRAME_DTYPES:
            raise FormatError(
                f"camera {self.camera!r}: expected a 2-D uint16 or float32 image, "
                f"got shape {arr.shape} {arr.dtype}"
            )
        self.shape = self.shape or arr.shape
        self.dtype = self.dtype or arr.dtype.name
        if arr.shape != self.shape or arr.dtype.name != self.dtype:
            raise FormatError(
                f"camera {self.camera!r}: expected {self.shape[0]}x{self.shape[1]} {self.dtype}, "
                f"got {arr.shape[0]}x{arr.shape[1]} {arr.dtype} (frame {frame_index})"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise FormatError(f"camera {self.camera!r}: frame {frame_index} has NaN/inf pixels")
        return np.array(arr, order="C", copy=True)  # fresh buffer: zero-copy send owns it

    def close(self) -> None:
        """Flush queued images for up to ``linger_ms`` and close the socket."""
        if self.state is CameraState.OPEN:
            self.state = CameraState.CLOSED
            self._sock.close()

    def __enter__(self) -> CameraPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimulatedSource:
    """Frame sets from a simulated :class:`~clients.scene.Scene`."""

    def __init__(
        self, scene: Scene, planes: Sequence[int], *, start: int = 0, frames: int | None = None
    ) -> None:
        self.scene, self.planes, self.start, self.frames = scene, list(planes), start, frames

    def __iter__(self) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        i = self.start
        while self.frames is None or i < self.start + self.frames:
            yield i, self.scene.frame(i, self.planes)
            i += 1


class TiffSource:
    """Frame sets replayed from one single-camera TIFF stack ``(T, H, W)`` per plane.

    Stacks stored one page per frame are read page by page as they are replayed; other
    layouts (e.g. frames as samples of one page) are loaded into memory.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        planes: Sequence[int],
        *,
        start: int = 0,
        frames: int | None = None,
        loop: bool = False,
    ) -> None:
        if len(paths) != len(planes):
            raise ValueError(
                f"got {len(paths)} TIFF stacks for {len(planes)} planes {list(planes)}"
            )
        self.planes, self.start, self.frames, self.loop = list(planes), start, frames, loop
        self._tifs: list[object] = []
        self._stacks = [self._open(Path(p)) for p in paths]
        self.length = min(len(s) for s in self._stacks)
        if self.length == 0:
            raise FormatError(f"TIFF stacks {[str(p) for p in paths]} hold no frames")

    def _open(self, path: Path) -> _LazyPages | np.ndarray:
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
            self._tifs.append(tif)
            series = tif.series[0]
            shape = tuple(series.shape)
            if len(shape) == 2:
                shape = (1, *shape)
            if len(shape) != 3:
                raise FormatError(
                    f"{path}: expected a single-camera stack (T, H, W), got "
                    f"shape {shape} (axes {series.axes})"
                )
            if len(series.pages) == shape[0]:
                return _LazyPages(series.pages)
            return series.asarray().reshape(shape)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise FormatError(f"cannot read TIFF stack {path}: {exc}") from exc

    def __iter__(self) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        n, i = 0, self.start
        while self.frames is None or n < self.frames:
            page = n % self.length
            if page == 0 and n and not self.loop:
                return
            yield (
                i,
                {
                    k: _as_frame_dtype(s[page])
                    for k, s in zip(self.planes, self._stacks, strict=True)
                },
            )
            n, i = n + 1, i + 1

    def close(self) -> None:
        for t in self._tifs:
            t.close()  # type: ignore[attr-defined]


class _LazyPages:
    """Pages of a TIFF series read on access."""

    def __init__(self, pages: Sequence) -> None:
        self._pages = pages

    def __len__(self) -> int:
        return len(self._pages)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._pages[i].asarray()


def _as_frame_dtype(img: np.ndarray) -> np.ndarray:
    if img.dtype.name in FRAME_DTYPES:
        return img
    return img.astype(np.float32) if img.dtype.kind == "f" else img.astype(np.uint16)


def run_cameras(
    source: Iterator[tuple[int, dict[int, np.ndarray]]] | SimulatedSource | TiffSource,
    publishers: dict[int, CameraPublisher],
    rate_hz: float,
    stop: threading.Event | None = None,
) -> int:
    """Publish every frame set of ``source`` at ``rate_hz`` (0: as fast as possible).

    Frames are paced on an absolute schedule; when the source is slower than the rate,
    frames go out as fast as it allows. Returns the number of frame sets sent.
    """
    if rate_hz < 0:
        raise ValueError(f"rate must be >= 0 Hz, got {rate_hz}")
    stop = stop or threading.Event()
    period = 1.0 / rate_hz if rate_hz else 0.0
    t0, n = time.perf_counter(), 0
    for index, images in source:
        if stop.is_set():
            break
        delay = t0 + n * period - time.perf_counter()
        if delay > 0 and stop.wait(delay):
            break
        t_ns = time.time_ns()
        for plane, image in images.items():
            publishers[plane].publish(index, image, t_ns)
        n += 1
    return n
