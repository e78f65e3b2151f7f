"""Tables written as a stream arrives: straight into the final file, flushed after
every append, so a recording that is interrupted -- even by SIGKILL -- keeps every frame
written before (``voxloc record`` and the service's server-side recordings).

Unlike the batch writers of :mod:`engines.io.loctable` (temp file, renamed on success),
the formats are the same (CONVENTIONS.md "Files"; column order, number formats and the
Picasso yaml documents come from :mod:`engines.io.loctable`):

* CSV: each batch of rows goes out in one ``write(2)`` call on an ``O_APPEND`` file, so
  a kill leaves whole rows only.
* HDF5: the ``locs`` dataset is resized, written and ``flush()`` ed per batch; before
  that, the yaml sidecar (``Frames``) is rewritten atomically (temp file + rename).
  A kill *between* batches leaves a consistent file; a kill during the
  sub-millisecond write of a batch can leave HDF5 metadata half-written (HDF5 is not
  journaled) -- record CSV where that matters.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from engines.errors import FormatError, OutputError
from engines.io.atomic import atomic_output
from engines.io.loctable import (
    LocTable,
    TableMeta,
    csv_formats,
    csv_text,
    picasso_dtype,
    picasso_info,
    picasso_records,
    table_format,
)
from engines.types import LOC_COLUMNS, Localizations


class StreamWriter(ABC):
    """Appends localizations as a :class:`LocTable` per batch (the file columns are the
    batch writers': photometry and precision included, NaN where unknown)."""

    def __init__(self, path: Path, meta: TableMeta) -> None:
        self.path = Path(path)
        self.meta = meta
        self.rows = 0
        self.frames = 0
        if not self.path.parent.is_dir():
            raise OutputError(
                f"cannot write {self.path}: directory {self.path.parent} does not exist"
            )

    def append(self, frames: list[Localizations]) -> None:
        """Write the rows of these frames' localizations and flush them to the file."""
        rows = [f.to_array() for f in frames]
        table = LocTable.from_rows(
            np.concatenate(rows) if rows else np.zeros((0, len(LOC_COLUMNS)))
        )
        self.frames = max([self.frames] + [f.frame + 1 for f in frames])
        self.sync_meta()  # metadata first: it may run ahead of the rows, never behind
        if len(table):
            self._append(table)
            self.rows += len(table)

    @abstractmethod
    def _append(self, table: LocTable) -> None: ...

    def sync_meta(self) -> None:  # noqa: B027 - CSV has no metadata to bring up to date
        """Bring metadata (frame count) on disk up to date."""

    @abstractmethod
    def close(self) -> None: ...


class CsvStreamWriter(StreamWriter):
    def __init__(self, path: Path, meta: TableMeta) -> None:
        super().__init__(path, meta)
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o666
            )
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._write((",".join(meta.csv_header()) + "\n").encode())
        self._fmt = csv_formats(meta)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _append(self, table: LocTable) -> None:
        cols = table.csv_columns(self.meta.psf_width)
        self._write(csv_text(np.column_stack(cols), self._fmt).encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Hdf5StreamWriter(StreamWriter):
    def __init__(self, path: Path, meta: TableMeta) -> None:
        import h5py

        super().__init__(path, meta)
        self.yaml_path = self.path.with_suffix(".yaml")
        self.dtype = picasso_dtype(widths=meta.psf_width is not None)
        try:
            self._h5 = h5py.File(self.path, "w")
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from exc
        self._ds = self._h5.create_dataset(
            "locs", shape=(0,), maxshape=(None,), dtype=self.dtype, chunks=(4096,)
        )
        self._h5.flush()
        self._meta_frames = -1
        self.sync_meta()

    def _append(self, table: LocTable) -> None:
        rec = picasso_records(table, self.meta, self.dtype)
        n = self._ds.shape[0]
        self._ds.resize((n + len(rec),))
        self._ds[n:] = rec
        self._h5.flush()

    def sync_meta(self) -> None:
        if self.frames == self._meta_frames:
            return
        import yaml

        meta = dataclasses.replace(self.meta, frames=self.frames)
        with atomic_output(self.yaml_path) as tmp:
            tmp.write_text(yaml.dump_all(picasso_info(meta), sort_keys=False))
        self._meta_frames = self.frames

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()
        self.sync_meta()


def open_stream_writer(path: str | Path, meta: TableMeta) -> StreamWriter:
    """A CSV or HDF5 stream writer chosen by the extension (.csv / .h5 / .hdf5)."""
    path = Path(path)
    kind = table_format(path)
    if kind == "smlm":
        raise FormatError(
            f"{path}: an .smlm file is written whole at the end, so it cannot be recorded "
            "as a stream; record to .csv or .h5 (and convert afterwards if needed)"
        )
    return CsvStreamWriter(path, meta) if kind == "csv" else Hdf5StreamWriter(path, meta)
