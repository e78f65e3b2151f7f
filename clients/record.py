"""``voxloc record``: write the service's localization stream to a table as it arrives
(the writers are :mod:`engines.io.streamtable`: flushed as they go, readable after a
SIGKILL)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from clients.subscriber import LocalizationSubscriber
from engines.io.streamtable import StreamWriter, open_stream_writer
from service.wire import LocsMessage

__all__ = ["RecordResult", "StreamWriter", "open_stream_writer", "record"]

log = logging.getLogger(__name__)

MAX_DRAIN = 256  # messages written per flush at most


@dataclass
class RecordResult:
    messages: int
    rows: int
    frames: int
    missed: int


def record(
    sub: LocalizationSubscriber,
    writer: StreamWriter,
    *,
    max_frames: int | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    idle_timeout_s: float | None = None,
) -> RecordResult:
    """Write messages from ``sub`` until ``max_frames`` messages, ``duration_s`` seconds,
    ``idle_timeout_s`` without a message, or ``stop`` is set. Closes ``writer``."""
    stop = stop or threading.Event()
    t_end = None if duration_s is None else time.monotonic() + duration_s
    messages, last_msg = 0, time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if t_end is not None and now >= t_end:
                break
            if idle_timeout_s is not None and now - last_msg >= idle_timeout_s:
                log.info("no localizations for %.1f s, stopping", idle_timeout_s)
                break
            batch = _drain(
                sub, 0.2, MAX_DRAIN if max_frames is None else min(MAX_DRAIN, max_frames - messages)
            )
            if batch:
                writer.append([m.locs for m in batch])
                messages += len(batch)
                last_msg = time.monotonic()
            if max_frames is not None and messages >= max_frames:
                break
    finally:
        writer.close()
    return RecordResult(messages, writer.rows, writer.frames, sub.gaps.missed)


def _drain(sub: LocalizationSubscriber, timeout_s: float, limit: int) -> list[LocsMessage]:
    """Up to ``limit`` messages: wait for the first, then take what is already queued."""
    first = sub.recv(timeout_s)
    if first is None:
        return []
    batch = [first]
    while len(batch) < limit:
        msg = sub.recv(0)
        if msg is None:
            break
        batch.append(msg)
    return batch
