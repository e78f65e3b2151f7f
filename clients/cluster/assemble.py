"""One output table per input, written in frame order as chunk results arrive.

Results come back in any order; each is stored through the :class:`Manifest` (so it
survives a crash) and the table is extended with every chunk that now continues the
frames already written. The table streams into a hidden temp file and is renamed into
place only when its last chunk is in, so nothing half-written carries the final name.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from clients.cluster.manifest import Manifest, Span
from engines.chunks import chunk_table
from engines.io.loctable import TableMeta, TableWriter, open_table_writer
from engines.localize import FIT_COLUMNS

log = logging.getLogger(__name__)


class OrderedOutput:
    """Writes ``manifest.output`` from the chunks ``manifest.spans``, in order."""

    def __init__(self, manifest: Manifest, meta: TableMeta) -> None:
        self.manifest = manifest
        self.meta = meta
        self.rows = 0
        self._next = 0  # index of the first span not yet in the table
        self._writer: TableWriter | None = None

    @property
    def output(self) -> Path:
        return self.manifest.output

    @property
    def done(self) -> bool:
        return self.manifest.up_to_date

    def add(self, span: Span, rows: np.ndarray, engine: str, worker: str) -> None:
        """A chunk's result arrived: keep it, then write whatever is now in order."""
        if self.manifest.is_finished(span):  # a re-run of a chunk already in: same rows
            return
        self.manifest.record(span, rows, engine, worker)
        self.flush()

    def flush(self) -> None:
        """Append every finished chunk that follows the table's last frame; commit at the end."""
        spans = self.manifest.spans
        while self._next < len(spans) and self.manifest.is_finished(spans[self._next]):
            rows = self.manifest.rows(spans[self._next])
            self._table().write_table(chunk_table(rows))
            self._next += 1
        if self._next == len(spans) and not self.done:
            self._commit()

    def abort(self) -> None:
        """Drop the temp file (the manifest and parts stay, for a resume)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _table(self) -> TableWriter:
        if self._writer is None:
            self._writer = open_table_writer(self.output, self.meta, extra_columns=FIT_COLUMNS)
        return self._writer

    def _commit(self) -> None:
        writer = self._table()
        engines = self.manifest.engines()
        if engines:  # the engines that actually ran, as a local run names its one
            info = {**self.meta.info, "Backend": ", ".join(engines)}
            writer.meta = dataclasses.replace(self.meta, info=info)
        writer.commit()
        self.rows = writer.rows
        self._writer = None
        self.manifest.mark_complete()
        log.debug("%s: complete, %d localizations", self.output, self.rows)
