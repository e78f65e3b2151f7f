"""Ingest: one bound PULL socket per camera; every message is decoded and validated.

Each camera has its own receive thread in the pipeline (:meth:`Ingest.receive_camera`
on that camera's socket and monitor only), so four streams are received in parallel:
pyzmq releases the GIL while it waits and copies, and so does the aligner's copy of the
payload into the frame-set buffer.

PUSH/PULL (cameras connect, the service binds) gives backpressure instead of silent
drops, and a camera that goes away and comes back reconnects on its own; a socket
monitor tracks the connection state. Every refused message is counted per camera under
a :class:`~service.wire.Reject` reason (docs/protocol.md Sec. 2.3).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from service.curve import CurveServer
from service.settings import CameraSettings, StreamSettings
from service.stats import ServiceStats
from service.types import CameraState
from service.wire import FrameDecoder, FrameMessage, Reject, WireError, decode_frame

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MONITOR_EVERY_S = 0.05  # a streaming camera's connection events, looked at this often
_MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
# a camera without an allowed CURVE key (or without CURVE) fails its handshake
_REFUSED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass
class CameraEndpoint:
    """One camera's socket, its monitor and its lifecycle state."""

    settings: CameraSettings
    sock: zmq.Socket
    monitor: zmq.Socket
    endpoint: str
    state: CameraState = CameraState.WAITING
    peers: int = 0
    decoder: FrameDecoder | None = None  # the fast path of its messages (Ingest._bind)
    timeout_ms: int = -1  # the socket's RCVTIMEO as last set
    monitor_due: float = 0.0  # time.monotonic() of the next look at the monitor

    @property
    def name(self) -> str:
        return self.settings.name


class Ingest:
    """Receives and validates camera messages; the pipeline's ingest thread drives it."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        cameras: list[CameraSettings],
        stream: StreamSettings,
        stats: ServiceStats,
        curve: CurveServer | None = None,
    ) -> None:
        self.stream = stream
        self.stats = stats
        self.curve = curve
        self.cameras: list[CameraEndpoint] = []
        try:
            for cam in cameras:
                self._bind(ctx, cam)
        except Exception:
            self.close()
            raise

    def _bind(self, ctx: zmq.Context, cam: CameraSettings) -> None:
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.stream.rcvhwm)
        # a message part larger than a frame of this camera closes the sender's connection
        # before it is read into memory (the camera reconnects by itself)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_part_bytes(cam))
        if self.curve is not None:
            self.curve.apply(sock)
        try:
            sock.bind(cam.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            raise OSError(
                f"cannot bind camera {cam.name!r} endpoint {cam.endpoint!r}: {exc}"
            ) from exc
        monitor = sock.get_monitor_socket(_MONITOR_EVENTS | (_REFUSED if self.curve else 0))
        ep = CameraEndpoint(cam, sock, monitor, sock.getsockopt_string(zmq.LAST_ENDPOINT))
        ep.decoder = FrameDecoder(
            source=cam.name,
            plane=cam.plane,
            height=self.stream.height,
            width=self.stream.width,
            dtype=cam.dtype,
        )
        self.cameras.append(ep)
        log.info("camera %s (plane %d) on %s", cam.name, cam.plane, ep.endpoint)

    def max_part_bytes(self, cam: CameraSettings) -> int:
        """Largest message part accepted from ``cam``: its frame's pixels (float32 unless
        the camera's dtype is set), or a header of at most ``MAX_HEADER_BYTES``."""
        itemsize = 2 if cam.dtype == "uint16" else 4
        return max(self.stream.height * self.stream.width * itemsize, MAX_HEADER_BYTES)

    def receive_camera(self, cam: CameraEndpoint, timeout_ms: int) -> list[FrameMessage]:
        """The next valid frame of one camera, waited for up to ``timeout_ms`` (its thread
        only); ``[]`` when none came or it was refused (counted under its reason).

        The wait is ZeroMQ's own (a blocking receive with ``RCVTIMEO``, the GIL released):
        no poll before it and no ``zmq.Again`` after a drain, which per message cost as
        much as the rest of the Python work. The connection monitor is looked at when
        the camera is idle and at least every ``MONITOR_EVERY_S`` while it streams."""
        now = time.monotonic()
        if now >= cam.monitor_due:
            cam.monitor_due = now + MONITOR_EVERY_S
            self._monitor_events(cam)
        if cam.timeout_ms != timeout_ms:
            cam.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
            cam.timeout_ms = timeout_ms
        recv = cam.sock.recv
        try:
            part = recv(copy=False)
        except zmq.Again:
            cam.monitor_due = 0.0  # idle: the monitor next time
            return []
        parts = [part]  # recv_multipart, without a getsockopt(RCVMORE) per part
        while part.more:  # the other parts arrived with the first
            part = recv(copy=False)
            parts.append(part)
        self.stats.frames_in(cam.name, 1)
        cam.state = CameraState.STREAMING
        msg = self._decoded(cam, parts)
        return [] if msg is None else [msg]

    def receive_ready(
        self, cam: CameraEndpoint, limit: int, received: list[str]
    ) -> list[FrameMessage]:
        """The valid frames among up to ``limit`` messages waiting in a camera's socket,
        taken without waiting (the one-thread receiver, after its poll said one is
        there; the connection monitor is in that poll). The camera's name goes into
        ``received`` once per message, for the caller to count
        (:meth:`ServiceStats.frames_in_from`); refused ones are counted here.

        Taking what has queued up, not one message a poll, spreads the poll round's own
        work over several frame sets once the receiver falls behind; a drain that ends
        early costs one ``zmq.Again``, which only happens when there is time for it."""
        out: list[FrameMessage] = []
        before = len(received)
        recv = cam.sock.recv
        for _ in range(limit):
            try:
                part = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            parts = [part]
            while part.more:
                part = recv(copy=False)
                parts.append(part)
            received.append(cam.name)
            msg = self._decoded(cam, parts)
            if msg is not None:
                out.append(msg)
        if len(received) > before:
            cam.state = CameraState.STREAMING
        return out

    def _decoded(self, cam: CameraEndpoint, parts: list) -> FrameMessage | None:
        """The camera's fast decode, else the full checks (a reject, usually)."""
        msg = cam.decoder.decode(parts) if cam.decoder is not None else None
        return msg if msg is not None else self._checked(cam, parts)

    def _checked(self, cam: CameraEndpoint, parts: list) -> FrameMessage | None:
        """The full decode and checks; a refused message is counted under its reason."""
        try:
            msg = decode_frame(parts)
            self._check(cam.settings, msg)
        except WireError as exc:
            self.stats.reject(cam.name, exc.reason.value)
            log.debug("camera %s: rejected (%s): %s", cam.name, exc.reason.value, exc)
            return None
        except Exception as exc:  # anything the decoder did not foresee is still garbage
            self.stats.reject(cam.name, Reject.MALFORMED.value)
            log.debug("camera %s: rejected (malformed): %r", cam.name, exc)
            return None
        return msg

    def _check(self, cam: CameraSettings, msg: FrameMessage) -> None:
        s = self.stream
        if msg.source != cam.name:
            raise WireError(
                Reject.SOURCE, f"expected source {cam.name!r} on {cam.endpoint}, got {msg.source!r}"
            )
        if msg.plane != cam.plane:
            raise WireError(
                Reject.PLANE, f"camera {cam.name!r} is plane {cam.plane}, got plane {msg.plane}"
            )
        if cam.dtype is not None and msg.image.dtype != cam.dtype:
            raise WireError(
                Reject.DTYPE, f"camera {cam.name!r} sends {cam.dtype}, got {msg.image.dtype.name}"
            )
        if msg.image.shape != (s.height, s.width):
            raise WireError(
                Reject.SHAPE,
                f"expected {s.height}x{s.width} from camera "
                f"{cam.name!r}, got {msg.image.shape[0]}x{msg.image.shape[1]}",
            )
        if msg.image.dtype.kind == "f" and not np.isfinite(msg.image).all():
            raise WireError(
                Reject.NONFINITE, f"camera {cam.name!r} frame {msg.frame} has NaN/inf pixels"
            )

    def monitor(self, cam: CameraEndpoint) -> None:
        """Handle ``cam``'s pending connection events (a thread that polls its monitor
        socket; :meth:`receive_camera` also looks every ``MONITOR_EVERY_S``)."""
        cam.monitor_due = time.monotonic() + MONITOR_EVERY_S
        self._monitor_events(cam)

    def _monitor_events(self, cam: CameraEndpoint) -> None:
        while True:
            try:
                event = recv_monitor_message(cam.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            self._monitor_event(cam, event)

    def _monitor_event(self, cam: CameraEndpoint, event: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            cam.peers += 1
            self.stats.connection(cam.name, connected=True)
            if cam.state in (CameraState.WAITING, CameraState.DISCONNECTED):
                cam.state = CameraState.CONNECTED
            log.info("camera %s connected", cam.name)
        elif event == zmq.EVENT_DISCONNECTED:
            cam.peers = max(cam.peers - 1, 0)
            self.stats.connection(cam.name, connected=False)
            if cam.peers == 0:
                cam.state = CameraState.DISCONNECTED
            log.info("camera %s disconnected", cam.name)
        elif event & _REFUSED:
            self.stats.reject(cam.name, Reject.UNAUTHENTICATED.value)
            log.warning("camera %s: a client without an allowed CURVE key was refused", cam.name)

    def close(self) -> None:
        for cam in self.cameras:
            cam.sock.disable_monitor()
            cam.monitor.close(linger=0)
            cam.sock.close(linger=0)
        self.cameras.clear()
