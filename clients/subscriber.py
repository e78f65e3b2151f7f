"""Localization subscribers (docs/protocol.md Sec. 1-2.2).

:class:`LocalizationSubscriber` is a blocking iterator, :class:`AsyncLocalizationSubscriber`
its asyncio twin; both connect a ZeroMQ ``SUB`` socket to the service's ``XPUB`` endpoint
and yield :class:`~service.wire.LocsMessage` s. Every message carries a gap-free sequence
number; :class:`GapTracker` (shared by both) counts messages lost between the service and
this subscriber (``missed``) and records each gap. A drop of a whole frame set inside the
service shows as a gap in ``frame`` without a gap in ``seq`` and is counted by the service.

    with LocalizationSubscriber("tcp://127.0.0.1:5560") as sub:
        for msg in sub:
            print(msg.frame, len(msg.locs), sub.gaps.missed)
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import zmq
import zmq.asyncio

from engines.errors import StreamError
from service.wire import LocsMessage, WireError, decode_locs

if TYPE_CHECKING:
    from service.curve import CurveClientKeys  # duck-typed: .apply(sock)

log = logging.getLogger(__name__)

DEFAULT_LOCS_ENDPOINT = "tcp://127.0.0.1:5560"
DEFAULT_RCVHWM = 100_000
_WILDCARD_HOST = re.compile(r"^tcp://(\*|0\.0\.0\.0|\[::\]):")


def connect_endpoint(endpoint: str) -> str:
    """Turn a bind endpoint (``tcp://*:5560``, ``tcp://0.0.0.0:5560``) into one to connect to."""
    return _WILDCARD_HOST.sub("tcp://127.0.0.1:", endpoint)


@dataclass(frozen=True)
class Gap:
    """Messages ``first_seq .. last_seq`` never arrived (frame indices in between unknown)."""

    first_seq: int
    last_seq: int
    after_frame: int

    @property
    def missed(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass
class GapTracker:
    """Follows ``seq`` numbers; ``missed`` counts lost messages, ``gaps`` keeps the last 1000.

    A ``seq`` lower than expected means the service restarted: the stream starts over
    (``restarts`` += 1) without counting a gap.
    """

    received: int = 0
    missed: int = 0
    restarts: int = 0
    expected_seq: int | None = None
    last_frame: int | None = None
    gaps: deque = field(default_factory=lambda: deque(maxlen=1000))

    def update(self, msg: LocsMessage) -> Gap | None:
        gap = None
        if self.expected_seq is not None and msg.seq > self.expected_seq:
            gap = Gap(self.expected_seq, msg.seq - 1, self.last_frame or 0)
            self.missed += gap.missed
            self.gaps.append(gap)
            log.warning(
                "missed %d localization messages (seq %d..%d)",
                gap.missed,
                gap.first_seq,
                gap.last_seq,
            )
        elif self.expected_seq is not None and msg.seq < self.expected_seq:
            self.restarts += 1
            log.warning(
                "sequence went back from %d to %d: service restarted",
                self.expected_seq - 1,
                msg.seq,
            )
        self.expected_seq = msg.seq + 1
        self.last_frame = msg.frame
        self.received += 1
        return gap


_SocketT = TypeVar("_SocketT", bound=zmq.Socket)  # a zmq or zmq.asyncio socket


def _sub_socket(
    ctx: zmq.Context[_SocketT],
    endpoint: str,
    rcvhwm: int,
    curve: CurveClientKeys | None = None,
) -> _SocketT:
    sock = ctx.socket(zmq.SUB)
    if curve is not None:  # a service with [security] curve = true (docs/deploy.md)
        curve.apply(sock)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        sock.connect(connect_endpoint(endpoint))
    except zmq.ZMQError as exc:
        sock.close()
        raise StreamError(f"cannot connect to localization stream {endpoint!r}: {exc}") from exc
    return sock


class _Base:
    def __init__(self, endpoint: str, on_gap: Callable[[Gap], None] | None) -> None:
        self.endpoint = endpoint
        self.gaps = GapTracker()
        self.bad_messages = 0
        self._on_gap = on_gap

    def _decode(self, parts: list) -> LocsMessage | None:
        try:
            msg = decode_locs(parts)
        except WireError as exc:
            self.bad_messages += 1
            log.warning("skipping bad localization message (%s): %s", exc.reason.value, exc)
            return None
        gap = self.gaps.update(msg)
        if gap is not None and self._on_gap is not None:
            self._on_gap(gap)
        return msg


class LocalizationSubscriber(_Base):
    """Blocking subscriber; iterate it, or call :meth:`recv` with a timeout."""

    def __init__(
        self,
        endpoint: str = DEFAULT_LOCS_ENDPOINT,
        *,
        rcvhwm: int = DEFAULT_RCVHWM,
        on_gap: Callable[[Gap], None] | None = None,
        context: zmq.Context | None = None,
        curve: CurveClientKeys | None = None,
    ) -> None:
        super().__init__(endpoint, on_gap)
        self._sock = _sub_socket(context or zmq.Context.instance(), endpoint, rcvhwm, curve)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    def recv(self, timeout_s: float | None = None) -> LocsMessage | None:
        """Next message, or None when ``timeout_s`` passes first (None: wait forever)."""
        deadline_ms = None if timeout_s is None else max(int(timeout_s * 1000), 0)
        while True:
            if not self._poller.poll(deadline_ms):
                return None
            msg = self._decode(self._sock.recv_multipart(copy=False))
            if msg is not None:
                return msg

    def __iter__(self) -> Iterator[LocsMessage]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> LocalizationSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLocalizationSubscriber(_Base):
    """asyncio subscriber: ``async for msg in sub`` or ``await sub.recv()``."""

    def __init__(
        self,
        endpoint: str = DEFAULT_LOCS_ENDPOINT,
        *,
        rcvhwm: int = DEFAULT_RCVHWM,
        on_gap: Callable[[Gap], None] | None = None,
        context: zmq.asyncio.Context | None = None,
        curve: CurveClientKeys | None = None,
    ) -> None:
        super().__init__(endpoint, on_gap)
        ctx = context or zmq.asyncio.Context.instance()
        self._sock = _sub_socket(ctx, endpoint, rcvhwm, curve)

    async def recv(self) -> LocsMessage:
        while True:
            msg = self._decode(await self._sock.recv_multipart(copy=False))
            if msg is not None:
                return msg

    async def __aiter__(self) -> AsyncIterator[LocsMessage]:
        while True:
            yield await self.recv()

    def close(self) -> None:
        self._sock.close(linger=0)

    async def __aenter__(self) -> AsyncLocalizationSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
