"""Localization tables on disk (CONVENTIONS.md "Files"), written atomically and streamed.

* CSV, ThunderSTORM-compatible: ``frame,x [nm],y [nm],z [nm],confidence`` then extra
  columns; ``frame`` counts from **1**.
* HDF5, Picasso-compatible: dataset ``locs`` with ``frame`` (from **0**), ``x``, ``y`` in
  **pixels**, ``z`` in nm, then ``confidence`` and extra columns; a ``.yaml`` sidecar
  holds the metadata documents Picasso reads (Frames, Height, Width, Pixelsize, ...).

Writers put rows in a hidden temp file and rename it into place only on :meth:`commit`,
so a failed or interrupted run never leaves a complete-looking table.
"""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from engines.errors import FormatError, OutputError
from engines.io.atomic import discard, reserve_temp
from engines.types import LOC_COLUMNS, Localizations

CSV_SUFFIXES = (".csv",)
HDF5_SUFFIXES = (".h5", ".hdf5")
CSV_FMT = {
    "frame": "%d",
    "x [nm]": "%.3f",
    "y [nm]": "%.3f",
    "z [nm]": "%.3f",
    "confidence": "%.5f",
}


@dataclass
class LocTable:
    """A table of localizations from many frames.

    Attributes:
        frame: ``(N,)`` int64 frame index, counting from 0.
        xyz_nm: ``(N, 3)`` float64 positions (x, y, z), nm.
        confidence: ``(N,)`` float64 in [0, 1].
        extra: extra ``(N,)`` columns by name (e.g. ``weight``), in file order.
    """

    frame: np.ndarray
    xyz_nm: np.ndarray
    confidence: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    @classmethod
    def from_localizations(
        cls, locs: Iterable[Localizations], extra: dict[str, np.ndarray] | None = None
    ) -> LocTable:
        rows = [loc.to_array() for loc in locs]
        arr = np.concatenate(rows) if rows else np.zeros((0, 5))
        return cls(arr[:, 0].astype(np.int64), arr[:, 1:4], arr[:, 4], dict(extra or {}))

    def in_frame(self, frame: int) -> np.ndarray:
        """``(n, 3)`` positions of one frame (0-based), nm."""
        return self.xyz_nm[self.frame == frame]


@dataclass(frozen=True)
class TableMeta:
    """What a table's readers need to know about its source (Picasso yaml keys)."""

    frames: int
    height: int
    width: int
    px_nm: float
    dz_nm: float
    planes: int
    generated_by: str = "voxloc"
    source: str = ""
    data_type: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class TableWriter(ABC):
    """Streams rows into a temp file; :meth:`commit` moves it into place."""

    def __init__(self, path: Path, meta: TableMeta, extra_columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.meta = meta
        self.extra_columns = tuple(extra_columns)
        self.rows = 0
        self._tmp = reserve_temp(self.path)
        self._done = False

    def write(
        self, locs: Sequence[Localizations], extra: dict[str, np.ndarray] | None = None
    ) -> None:
        """Append the localizations of some frames (and their extra columns, if any)."""
        self.write_table(LocTable.from_localizations(locs, extra))

    def write_table(self, table: LocTable) -> None:
        missing = [c for c in self.extra_columns if c not in table.extra]
        if missing:
            raise ValueError(f"rows lack the extra columns {missing}")
        if len(table):
            self._append(table)
            self.rows += len(table)

    @abstractmethod
    def _append(self, table: LocTable) -> None: ...

    @abstractmethod
    def _finish(self) -> None:
        """Flush and close the temp file(s)."""

    def _temps(self) -> list[Path]:
        return [self._tmp]

    def commit(self) -> Path:
        self._finish()
        self._tmp.replace(self.path)
        self._done = True
        return self.path

    def abort(self) -> None:
        if not self._done:
            try:
                self._finish()
            finally:
                discard(self._temps())
            self._done = True

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self._done:
            self.commit()
        else:
            self.abort()


class CsvWriter(TableWriter):
    def __init__(self, path: Path, meta: TableMeta, extra_columns: Sequence[str] = ()) -> None:
        super().__init__(path, meta, extra_columns)
        self._fh = open(self._tmp, "w", newline="")  # noqa: SIM115 - closed in _finish
        self._fh.write(",".join(LOC_COLUMNS + self.extra_columns) + "\n")
        self._fmt = list(CSV_FMT.values()) + ["%.6g"] * len(self.extra_columns)

    def _append(self, table: LocTable) -> None:
        cols = [
            table.frame + 1,
            *table.xyz_nm.T,
            table.confidence,
            *(table.extra[c] for c in self.extra_columns),
        ]
        np.savetxt(self._fh, np.column_stack(cols), fmt=self._fmt, delimiter=",")

    def _finish(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class Hdf5Writer(TableWriter):
    """Picasso ``locs`` dataset (resizable, appended per batch) + yaml sidecar."""

    def __init__(self, path: Path, meta: TableMeta, extra_columns: Sequence[str] = ()) -> None:
        import h5py

        super().__init__(path, meta, extra_columns)
        self.yaml_path = self.path.with_suffix(".yaml")
        self._yaml_tmp = reserve_temp(self.yaml_path)
        self.dtype = picasso_dtype(self.extra_columns)
        try:
            self._h5 = h5py.File(self._tmp, "w")
        except OSError as exc:
            discard([self._tmp, self._yaml_tmp])
            raise OutputError(f"cannot write output {self.path}: {exc}") from exc
        self._ds = self._h5.create_dataset(
            "locs", shape=(0,), maxshape=(None,), dtype=self.dtype, chunks=(16384,)
        )

    def _append(self, table: LocTable) -> None:
        rec = picasso_records(table, self.meta.px_nm, self.dtype)
        n = self._ds.shape[0]
        self._ds.resize((n + len(rec),))
        self._ds[n:] = rec

    def _finish(self) -> None:
        if self._h5.id.valid:
            self._h5.close()

    def _temps(self) -> list[Path]:
        return [self._tmp, self._yaml_tmp]

    def commit(self) -> Path:
        import yaml

        self._finish()
        self._yaml_tmp.write_text(yaml.dump_all(picasso_info(self.meta), sort_keys=False))
        self._yaml_tmp.replace(self.yaml_path)  # the .h5 last: it marks a finished run
        return super().commit()


def picasso_dtype(extra_columns: Sequence[str] = ()) -> np.dtype:
    """Record dtype of the Picasso ``locs`` dataset (also used by ``voxloc record``)."""
    fields = [("frame", "u4"), ("x", "f4"), ("y", "f4"), ("z", "f4"), ("confidence", "f4")]
    return np.dtype(fields + [(c, "f4") for c in extra_columns])


def picasso_records(table: LocTable, px_nm: float, dtype: np.dtype) -> np.ndarray:
    """``table`` as Picasso records: frame from 0, x and y in pixels, z in nm."""
    if dtype.names is None:
        raise ValueError(f"expected a structured Picasso dtype, got {dtype}")
    rec = np.zeros(len(table), dtype)
    rec["frame"] = table.frame
    rec["x"] = table.xyz_nm[:, 0] / px_nm
    rec["y"] = table.xyz_nm[:, 1] / px_nm
    rec["z"] = table.xyz_nm[:, 2]
    rec["confidence"] = table.confidence
    for c in dtype.names[5:]:
        rec[c] = table.extra[c]
    return rec


def picasso_info(meta: TableMeta) -> list[dict[str, Any]]:
    """The yaml documents of the sidecar: the movie's info, then the localizer's."""
    movie = {
        "Byte Order": "<",
        "Data Type": meta.data_type,
        "File": meta.source,
        "Frames": meta.frames,
        "Height": meta.height,
        "Width": meta.width,
        "Planes": meta.planes,
    }
    loc = {
        "Generated by": meta.generated_by,
        "Pixelsize": float(meta.px_nm),
        "Plane spacing (nm)": float(meta.dz_nm),
        "z unit": "nm",
        **meta.info,
    }
    return [movie, loc]


def table_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise FormatError(
        f"output {path}: unknown table format {suffix or '(no extension)'!r}; "
        "expected .csv (ThunderSTORM) or .h5 / .hdf5 (Picasso)"
    )


def open_table_writer(
    path: str | Path, meta: TableMeta, extra_columns: Sequence[str] = ()
) -> TableWriter:
    """A CSV or HDF5 writer chosen by the file extension."""
    path = Path(path)
    cls = CsvWriter if table_format(path) == "csv" else Hdf5Writer
    return cls(path, meta, extra_columns)


def read_table(path: str | Path) -> LocTable:
    """Read a CSV or HDF5 table back (frames counting from 0, positions in nm)."""
    path = Path(path)
    return read_csv(path) if table_format(path) == "csv" else read_hdf5(path)[0]


def read_csv(path: Path) -> LocTable:
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if header is None or tuple(header[:5]) != LOC_COLUMNS:
        raise FormatError(
            f"{path}: expected the header {','.join(LOC_COLUMNS)}, got {','.join(header or [])!r}"
        )
    with open(path) as fh:
        fh.readline()
        body = fh.read()
    data = (
        np.loadtxt(body.splitlines(), delimiter=",", ndmin=2)
        if body.strip()
        else np.zeros((0, len(header)))
    )
    extra = {name: data[:, 5 + i] for i, name in enumerate(header[5:])}
    return LocTable(data[:, 0].astype(np.int64) - 1, data[:, 1:4], data[:, 4], extra)


def read_hdf5(path: Path) -> tuple[LocTable, list[dict[str, Any]]]:
    """The table (x, y converted to nm with the sidecar's Pixelsize) and the yaml documents."""
    import h5py
    import yaml

    yaml_path = Path(path).with_suffix(".yaml")
    try:
        info = list(yaml.safe_load_all(yaml_path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise FormatError(f"{path}: cannot read the yaml sidecar {yaml_path}: {exc}") from exc
    px = next((d["Pixelsize"] for d in info if isinstance(d, dict) and "Pixelsize" in d), None)
    if px is None:
        raise FormatError(f"{yaml_path}: no Pixelsize entry")
    with h5py.File(path, "r") as f:
        if "locs" not in f:
            raise FormatError(f"{path}: no 'locs' dataset")
        rec = f["locs"][...]
    xyz = np.column_stack([rec["x"] * px, rec["y"] * px, rec["z"]]).astype(np.float64)
    names = [n for n in rec.dtype.names if n not in ("frame", "x", "y", "z", "confidence")]
    conf = rec["confidence"] if "confidence" in rec.dtype.names else np.ones(len(rec))
    table = LocTable(
        rec["frame"].astype(np.int64),
        xyz,
        conf.astype(np.float64),
        {n: rec[n].astype(np.float64) for n in names},
    )
    return table, info
