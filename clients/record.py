"""``voxloc record``: write the service's localization stream to a table as it arrives
(the writers are :mod:`engines.io.streamtable`: flushed as they go, readable after a
SIGKILL)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clients.subscriber import LocalizationSubscriber
from engines.io.streamtable import StreamWriter, open_stream_writer
from service.wire import LocsMessage

__all__ = ["RecordResult", "StreamWriter", "acquisition_path", "open_stream_writer", "record"]

log = logging.getLogger(__name__)

MAX_DRAIN = 256  # messages written per flush at most


@dataclass
class RecordResult:
    messages: int
    rows: int
    frames: int
    missed: int
    files: list[Path] = field(default_factory=list)  # one per acquisition, in order


def acquisition_path(first: Path, acquisition: str) -> Path:
    """Where a recording that began at ``first`` writes a later acquisition:
    ``run.csv`` -> ``run.<acquisition>.csv`` (characters unsafe in a file name -> ``_``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in acquisition) or "none"
    return first.with_name(f"{first.stem}.{safe}{first.suffix}")


def record(
    sub: LocalizationSubscriber,
    writer: StreamWriter,
    *,
    max_frames: int | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    idle_timeout_s: float | None = None,
    next_writer: Callable[[str], StreamWriter] | None = None,
) -> RecordResult:
    """Write messages from ``sub`` until ``max_frames`` messages, ``duration_s`` seconds,
    ``idle_timeout_s`` without a message, or ``stop`` is set. Closes the writers.

    With ``next_writer``, a message of another acquisition than the one being written
    closes ``writer`` and continues in ``next_writer(acquisition)``: one file per
    acquisition (the first one seen goes to ``writer``)."""
    stop = stop or threading.Event()
    t_end = None if duration_s is None else time.monotonic() + duration_s
    messages, last_msg = 0, time.monotonic()
    split = _AcquisitionFiles(writer, next_writer)
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
                for part in split.parts(batch):
                    split.writer.append([m.locs for m in part])
                messages += len(batch)
                last_msg = time.monotonic()
            if max_frames is not None and messages >= max_frames:
                break
    finally:
        split.close()
    return RecordResult(messages, split.rows, split.frames, sub.gaps.missed, split.files)


class _AcquisitionFiles:
    """The writer of the acquisition being recorded; a new one per acquisition."""

    def __init__(
        self, first: StreamWriter, next_writer: Callable[[str], StreamWriter] | None
    ) -> None:
        self.writer = first
        self.files = [first.path]
        self._next = next_writer
        self._acquisition: str | None = None
        self.rows = self.frames = 0

    def parts(self, batch: list[LocsMessage]) -> Iterator[list[LocsMessage]]:
        """``batch`` cut where the acquisition changes; switches writers in between."""
        start = 0
        for i, msg in enumerate(batch):
            if self._acquisition is None:
                self._acquisition = msg.acquisition
            if msg.acquisition != self._acquisition and self._next is not None:
                if i > start:
                    yield batch[start:i]
                self._switch(msg.acquisition)
                start = i
        if start < len(batch):
            yield batch[start:]

    def _switch(self, acquisition: str) -> None:
        assert self._next is not None
        self._close_current()
        self.writer = self._next(acquisition)
        self.files.append(self.writer.path)
        self._acquisition = acquisition
        log.info("acquisition %r: recording to %s", acquisition, self.writer.path)

    def _close_current(self) -> None:
        self.writer.close()
        self.rows += self.writer.rows
        self.frames += self.writer.frames

    def close(self) -> None:
        self._close_current()


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
