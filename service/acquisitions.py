"""Acquisitions: what the service has assembled and published, one record per
acquisition, and its server-side recording.

An acquisition starts by ``POST /acquisitions`` or when a camera header names a new one;
frames without an acquisition id belong to the current one. The registry observes every
published localization message (a :class:`~service.types.LocalizationObserver`), counts
it under its acquisition, and where a recording was asked for writes it to a table
flushed as it goes (:mod:`engines.io.streamtable`) plus ``<table>.json`` with the
acquisition's metadata, rewritten atomically when it changes (at most once a second for
the counts), so both read back after a SIGKILL of the service.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import VoxlocError
from engines.io.atomic import atomic_output
from engines.io.loctable import TableMeta
from engines.io.streamtable import StreamWriter, open_stream_writer
from service.types import FrameSet
from service.wire import LocsMessage

log = logging.getLogger(__name__)

META_EVERY_S = 1.0  # the metadata JSON's counts are rewritten at most this often
RECORD_SUFFIXES = (".csv", ".h5", ".hdf5")


class AcquisitionError(VoxlocError):
    """An acquisition request that cannot be carried out (names what is wrong)."""


class AcquisitionState(str, enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class Acquisition:
    id: str
    name: str
    metadata: dict[str, Any]
    started_ns: int
    state: AcquisitionState = AcquisitionState.RUNNING
    stopped_ns: int | None = None
    record_path: Path | None = None
    frame_sets: int = 0
    localizations: int = 0
    last_frame: int = -1
    models: list[dict[str, Any]] = field(default_factory=list)  # model/threshold history
    counts_at_start: dict[str, Counter[str]] = field(default_factory=dict)
    writer: StreamWriter | None = None
    meta_written: float = 0.0

    def summary(self, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "metadata": self.metadata,
            "started_ns": self.started_ns,
            "stopped_ns": self.stopped_ns,
            "frame_sets": self.frame_sets,
            "localizations": self.localizations,
            "last_frame": self.last_frame,
            "recording": str(self.record_path) if self.record_path else None,
            "models": self.models,
            "counts": counts,
        }


class Acquisitions:
    """The registry and recorder; thread-safe (API thread and inference thread)."""

    name = "acquisitions"

    def __init__(
        self,
        *,
        begin: Callable[[str], None],
        current: Callable[[], str],
        counts: Callable[[], dict[str, dict[str, int]]],
        context: Callable[[], dict[str, Any]],
        record_dir: Path,
        table_meta: Callable[[str], TableMeta],
    ) -> None:
        """
        Args:
            begin: starts assembling an acquisition (the aligner's ``begin``).
            current: the aligner's current acquisition id.
            counts: service-wide counters by reason (``{"rejects": ..., "dropped": ...}``).
            context: what the metadata records beside the counts (registration, settings).
            record_dir: recordings are written below this folder only.
            table_meta: what a recording's table records of its source (Picasso yaml),
                given the acquisition id.
        """
        self._begin, self._current, self._counts = begin, current, counts
        self._context, self._table_meta = context, table_meta
        self.record_dir = Path(record_dir)
        self._lock = threading.Lock()
        self._acqs: dict[str, Acquisition] = {}
        self._ids = itertools.count(1)

    # -- control plane ------------------------------------------------------------------
    def start(
        self,
        name: str,
        metadata: dict[str, Any] | None = None,
        record: str | None = None,
    ) -> dict[str, Any]:
        """Start a new acquisition (the current one ends); ``record`` is a table path
        relative to ``record_dir`` ending in .csv or .h5."""
        path = self._record_path(record) if record is not None else None
        with self._lock:
            acq_id = f"{next(self._ids):04d}-{name}"[:255]
            self._stop_locked(self._current())
            acq = self._new_locked(acq_id, name, metadata or {})
            if path is not None:
                acq.record_path = path
                acq.writer = open_stream_writer(path, self._table_meta(acq_id))
                self._write_meta(acq, force=True)
        self._begin(acq_id)
        log.info("acquisition %s started%s", acq_id, f", recording {path}" if path else "")
        return self.get(acq_id)

    def stop_current(self) -> dict[str, Any]:
        current = self._current()
        with self._lock:
            acq = self._acqs.get(current)
            if acq is None or acq.state is AcquisitionState.STOPPED:
                raise AcquisitionError("no acquisition is running")
            self._stop_locked(current)
        self._begin("")  # frames without an acquisition id no longer belong to it
        return self.get(current)

    def get(self, acq_id: str) -> dict[str, Any]:
        with self._lock:
            acq = self._acqs.get(acq_id)
            if acq is None:
                raise KeyError(f"unknown acquisition {acq_id!r}")
            return acq.summary(self._since_start(acq))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [a.summary(self._since_start(a)) for a in self._acqs.values()]

    def close(self) -> None:
        with self._lock:
            for acq_id in list(self._acqs):
                self._stop_locked(acq_id)

    def _record_path(self, record: str) -> Path:
        rel = Path(record)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise AcquisitionError(
                f"record path must be relative to the recordings folder {self.record_dir} "
                f"without '..', got {record!r}"
            )
        if rel.suffix.lower() not in RECORD_SUFFIXES:
            raise AcquisitionError(f"record path must end in .csv or .h5, got {record!r}")
        path = self.record_dir / rel
        if path.exists():
            raise AcquisitionError(f"recording {path} exists already; choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- observer (inference thread) -----------------------------------------------------------
    def observe(self, msg: LocsMessage, frame_set: FrameSet) -> None:
        with self._lock:
            acq = self._acqs.get(msg.acquisition)
            if acq is None:  # named by a camera header, or frames before any start
                acq = self._new_locked(msg.acquisition, msg.acquisition or "(none)", {})
            acq.frame_sets += 1
            acq.localizations += len(msg.locs)
            acq.last_frame = max(acq.last_frame, msg.frame)
            model = {
                "model": msg.model,
                "version": msg.model_version,
                "threshold": msg.threshold,
                "refined": msg.refined,
            }
            changed = not acq.models or {k: acq.models[-1][k] for k in model} != model
            if changed:
                acq.models.append({**model, "from_frame": msg.frame})
            if acq.writer is not None:
                acq.writer.append([msg.locs])
                self._write_meta(acq, force=changed)

    # -- internals (lock held) ----------------------------------------------------------------
    def _new_locked(self, acq_id: str, name: str, metadata: dict[str, Any]) -> Acquisition:
        counts = {k: Counter(v) for k, v in self._counts().items()}
        acq = Acquisition(acq_id, name, metadata, time.time_ns(), counts_at_start=counts)
        self._acqs[acq_id] = acq
        return acq

    def _stop_locked(self, acq_id: str) -> None:
        acq = self._acqs.get(acq_id)
        if acq is None or acq.state is AcquisitionState.STOPPED:
            return
        acq.state, acq.stopped_ns = AcquisitionState.STOPPED, time.time_ns()
        if acq.writer is not None:
            acq.writer.close()
            self._write_meta(acq, force=True)
            acq.writer = None
        log.info("acquisition %s stopped: %d frame sets", acq_id, acq.frame_sets)

    def _since_start(self, acq: Acquisition) -> dict[str, dict[str, int]]:
        now = self._counts()
        return {
            kind: {r: n for r, n in (Counter(v) - acq.counts_at_start.get(kind, Counter())).items()}
            for kind, v in now.items()
        }

    def _write_meta(self, acq: Acquisition, *, force: bool) -> None:
        now = time.monotonic()
        if acq.record_path is None or (not force and now - acq.meta_written < META_EVERY_S):
            return
        doc = {**acq.summary(self._since_start(acq)), **self._context()}
        with atomic_output(acq.record_path.with_suffix(acq.record_path.suffix + ".json")) as tmp:
            tmp.write_text(json.dumps(doc, indent=2, default=str))
        acq.meta_written = now
