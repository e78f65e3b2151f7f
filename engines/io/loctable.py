"""Localization tables on disk (CONVENTIONS.md "Files"), written atomically and streamed.

* CSV, ThunderSTORM-compatible: ``frame,x [nm],y [nm],z [nm],confidence``, then the
  photometry and precision columns of :data:`LOC_COLUMNS` (``intensity [photon]``,
  ``offset [photon]``, ``uncertainty_x/y/z [nm]``), the derived ThunderSTORM columns
  ``bkgstd [photon]`` and ``uncertainty_xy [nm]`` (:data:`DERIVED_CSV_COLUMNS`), then
  extra columns; ``frame`` counts from **1**; unknown values are written ``NaN``.
* HDF5, Picasso-compatible: dataset ``locs`` with ``frame`` (from **0**), ``x``, ``y`` in
  **pixels**, ``z`` in nm, ``confidence``, ``photons``, ``bg``, ``lpx``, ``lpy`` (pixels),
  ``lpz`` (nm), then extra columns; NaN where unknown. A ``.yaml`` sidecar holds the
  metadata documents Picasso reads (Frames, Height, Width, Pixelsize, camera, ...).

Tables written before photometry (only the first five columns / fields) read back with
NaN photometry and precision.

Writers put rows in a hidden temp file and rename it into place only on :meth:`commit`,
so a failed or interrupted run never leaves a complete-looking table.
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from engines.errors import FormatError, OutputError
from engines.io.atomic import discard, reserve_temp
from engines.io.tablemeta import (
    CSV_FMT,
    CSV_HEADER,
    DERIVED_CSV_COLUMNS,
    PICASSO_FIELDS,
    PSF_WIDTH_NOTE,
    SIGMA_CSV_COLUMNS,
    SIGMA_FIELDS,
    TableMeta,
    camera_info,
    model_meta,
    picasso_info,
)
from engines.psf_width import PsfWidth
from engines.types import BASE_COLUMNS, LOC_COLUMNS, Localizations

__all__ = [  # the table metadata is defined in engines.io.tablemeta, imported from here too
    "CSV_FMT",
    "CSV_HEADER",
    "DERIVED_CSV_COLUMNS",
    "PICASSO_FIELDS",
    "PSF_WIDTH_NOTE",
    "SIGMA_CSV_COLUMNS",
    "SIGMA_FIELDS",
    "CsvWriter",
    "Hdf5Writer",
    "LocTable",
    "TableMeta",
    "TableWriter",
    "camera_info",
    "csv_formats",
    "csv_text",
    "model_meta",
    "open_table_writer",
    "picasso_dtype",
    "picasso_info",
    "picasso_records",
    "read_csv",
    "read_hdf5",
    "read_table",
    "table_format",
]

CSV_SUFFIXES = (".csv",)
HDF5_SUFFIXES = (".h5", ".hdf5")
SMLM_SUFFIXES = (".smlm",)
UNKNOWN = np.full(0, np.nan)  # a LocTable photometry field not given: NaN in every row


@dataclass
class LocTable:
    """A table of localizations from many frames.

    Attributes:
        frame: ``(N,)`` int64 frame index, counting from 0.
        xyz_nm: ``(N, 3)`` float64 positions (x, y, z), nm.
        confidence: ``(N,)`` float64 in [0, 1].
        extra: extra ``(N,)`` columns by name (e.g. ``weight``), in file order.
        photons: ``(N,)`` float64 photons summed over the planes; NaN where unknown.
        background: ``(N,)`` float64 background per pixel and plane, photons; NaN where
            unknown.
        precision_nm: ``(N, 3)`` float64 one-sigma precision of x, y, z, nm; NaN where
            unknown.
        Left out (or :data:`UNKNOWN`), the photometry fields are NaN.
    """

    frame: np.ndarray
    xyz_nm: np.ndarray
    confidence: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    photons: np.ndarray = field(default_factory=lambda: UNKNOWN)
    background: np.ndarray = field(default_factory=lambda: UNKNOWN)
    precision_nm: np.ndarray = field(default_factory=lambda: UNKNOWN)

    def __post_init__(self) -> None:
        n = len(self)
        for name, shape in (("photons", (n,)), ("background", (n,)), ("precision_nm", (n, 3))):
            value = getattr(self, name)
            if value is UNKNOWN:
                value = np.full(shape, np.nan)
            setattr(self, name, np.asarray(value, np.float64).reshape(shape))

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    @classmethod
    def from_rows(cls, rows: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> LocTable:
        """From ``(N, 10)`` float64 rows in :data:`LOC_COLUMNS` order (frame from 0), or
        the ``(N, 5)`` rows of tables and chunks written before photometry."""
        rows = np.asarray(rows, np.float64)
        if rows.ndim != 2 or rows.shape[1] not in (len(LOC_COLUMNS), len(BASE_COLUMNS)):
            raise ValueError(
                f"expected (N, {len(LOC_COLUMNS)}) or (N, {len(BASE_COLUMNS)}) localization "
                f"rows, got shape {rows.shape}"
            )
        full = rows.shape[1] == len(LOC_COLUMNS)
        return cls(
            rows[:, 0].astype(np.int64),
            rows[:, 1:4],
            rows[:, 4],
            dict(extra or {}),
            rows[:, 5] if full else UNKNOWN,
            rows[:, 6] if full else UNKNOWN,
            rows[:, 7:10] if full else UNKNOWN,
        )

    def to_rows(self) -> np.ndarray:
        """``(N, 10)`` float64 rows in :data:`LOC_COLUMNS` order (frame from 0)."""
        return np.column_stack(
            [self.frame, self.xyz_nm, self.confidence, self.photons, self.background]
            + [self.precision_nm]
        ).reshape(len(self), len(LOC_COLUMNS))

    @classmethod
    def from_localizations(
        cls, locs: Iterable[Localizations], extra: dict[str, np.ndarray] | None = None
    ) -> LocTable:
        rows = [loc.to_array() for loc in locs]
        arr = np.concatenate(rows) if rows else np.zeros((0, len(LOC_COLUMNS)))
        return cls.from_rows(arr, extra)

    def csv_columns(self, psf_width: PsfWidth | None = None) -> list[np.ndarray]:
        """The :data:`CSV_HEADER` columns (frame counting from 1, as ThunderSTORM), then
        with ``psf_width`` the :data:`SIGMA_CSV_COLUMNS` at each localization's z."""
        sx, sy, sz = self.precision_nm.T
        with np.errstate(invalid="ignore"):  # a negative background: NaN, not a warning
            bkgstd = np.sqrt(self.background)
        widths = [] if psf_width is None else [psf_width(self.xyz_nm[:, 2])] * 2
        return [
            self.frame + 1,
            *self.xyz_nm.T,
            self.confidence,
            self.photons,
            self.background,
            sx,
            sy,
            sz,
            bkgstd,
            np.sqrt((sx**2 + sy**2) / 2),
            *widths,
        ]

    def in_frame(self, frame: int) -> np.ndarray:
        """``(n, 3)`` positions of one frame (0-based), nm."""
        return self.xyz_nm[self.frame == frame]


class TableWriter(ABC):
    """Streams rows into a temp file; :meth:`commit` moves it into place."""

    def __init__(self, path: Path, meta: TableMeta, extra_columns: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.meta = meta
        self.extra_columns = tuple(extra_columns)
        taken = set(meta.csv_header()) | set(PICASSO_FIELDS) | set(SIGMA_FIELDS)
        clash = [c for c in self.extra_columns if c in taken]
        if clash:
            raise ValueError(f"extra columns {clash} would repeat standard table columns")
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
        self._fh.write(",".join(meta.csv_header(self.extra_columns)) + "\n")
        self._fmt = csv_formats(meta, self.extra_columns)

    def _append(self, table: LocTable) -> None:
        cols = table.csv_columns(self.meta.psf_width)
        cols += [table.extra[c] for c in self.extra_columns]
        self._fh.write(csv_text(np.column_stack(cols), self._fmt))

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
        self.dtype = picasso_dtype(self.extra_columns, widths=meta.psf_width is not None)
        try:
            self._h5 = h5py.File(self._tmp, "w")
        except OSError as exc:
            discard([self._tmp, self._yaml_tmp])
            raise OutputError(f"cannot write output {self.path}: {exc}") from exc
        self._ds = self._h5.create_dataset(
            "locs", shape=(0,), maxshape=(None,), dtype=self.dtype, chunks=(16384,)
        )

    def _append(self, table: LocTable) -> None:
        rec = picasso_records(table, self.meta, self.dtype)
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


def csv_formats(meta: TableMeta, extra_columns: Sequence[str] = ()) -> list[str]:
    """``savetxt`` formats of the columns of :meth:`TableMeta.csv_header`."""
    return [CSV_FMT.get(c, "%.6g") for c in meta.csv_header(extra_columns)]


def csv_text(rows: np.ndarray, fmt: Sequence[str]) -> str:
    """CSV lines of ``rows``; NaN is written ``NaN``, which Java's ThunderSTORM, pandas
    (Picasso, locan) and numpy all parse."""
    buf = io.StringIO()
    np.savetxt(buf, rows, fmt=list(fmt), delimiter=",")
    return buf.getvalue().replace("nan", "NaN")


def picasso_dtype(extra_columns: Sequence[str] = (), *, widths: bool = False) -> np.dtype:
    """Record dtype of the Picasso ``locs`` dataset (also used by ``voxloc record``);
    ``widths`` adds the PSF widths ``sx``, ``sy``."""
    names = PICASSO_FIELDS[1:] + (SIGMA_FIELDS if widths else ()) + tuple(extra_columns)
    return np.dtype([("frame", "u4")] + [(c, "f4") for c in names])


def picasso_records(table: LocTable, meta: TableMeta, dtype: np.dtype) -> np.ndarray:
    """``table`` as Picasso records: frame from 0, x, y and their precisions ``lpx``,
    ``lpy`` (and PSF widths ``sx``, ``sy`` where ``dtype`` has them) in pixels, z and
    ``lpz`` in nm, ``photons`` summed over the planes, ``bg`` per pixel and plane."""
    if dtype.names is None:
        raise ValueError(f"expected a structured Picasso dtype, got {dtype}")
    px_nm = meta.px_nm
    rec = np.zeros(len(table), dtype)
    rec["frame"] = table.frame
    rec["x"] = table.xyz_nm[:, 0] / px_nm
    rec["y"] = table.xyz_nm[:, 1] / px_nm
    rec["z"] = table.xyz_nm[:, 2]
    rec["confidence"] = table.confidence
    rec["photons"] = table.photons
    rec["bg"] = table.background
    rec["lpx"] = table.precision_nm[:, 0] / px_nm
    rec["lpy"] = table.precision_nm[:, 1] / px_nm
    rec["lpz"] = table.precision_nm[:, 2]
    if "sx" in dtype.names:
        if meta.psf_width is None:
            raise ValueError("sx, sy asked for, but the table's metadata has no PSF width")
        rec["sx"] = rec["sy"] = meta.psf_width(table.xyz_nm[:, 2]) / px_nm
    for c in dtype.names:
        if c not in PICASSO_FIELDS and c not in SIGMA_FIELDS:
            rec[c] = table.extra[c]
    return rec


def table_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in SMLM_SUFFIXES:
        return "smlm"
    raise FormatError(
        f"output {path}: unknown table format {suffix or '(no extension)'!r}; "
        "expected .csv (ThunderSTORM), .h5 / .hdf5 (Picasso) or .smlm (SMLM, ShareLoc)"
    )


def open_table_writer(
    path: str | Path, meta: TableMeta, extra_columns: Sequence[str] = ()
) -> TableWriter:
    """A CSV, HDF5 or SMLM writer chosen by the file extension."""
    path = Path(path)
    kind = table_format(path)
    if kind == "smlm":
        from engines.io.smlm import SmlmWriter

        return SmlmWriter(path, meta, extra_columns)
    cls = CsvWriter if kind == "csv" else Hdf5Writer
    return cls(path, meta, extra_columns)


def read_table(path: str | Path) -> LocTable:
    """Read a CSV, HDF5 or SMLM table back (frames counting from 0, positions in nm)."""
    path = Path(path)
    kind = table_format(path)
    if kind == "smlm":
        from engines.io.smlm import read_smlm

        return read_smlm(path)[0]
    return read_csv(path) if kind == "csv" else read_hdf5(path)[0]


def read_csv(path: Path) -> LocTable:
    """A voxloc CSV, also one written before photometry (``frame`` ... ``confidence`` only:
    photometry NaN). The photometry columns are found by name; a table with
    ``uncertainty_xy [nm]`` but no per-axis x/y columns gets it for both x and y."""
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if header is None or tuple(header[:5]) != BASE_COLUMNS:
        raise FormatError(
            f"{path}: expected the header to start {','.join(BASE_COLUMNS)}, "
            f"got {','.join(header or [])!r}"
        )
    with open(path) as fh:
        fh.readline()
        body = fh.read()
    try:
        data = (
            np.loadtxt(body.splitlines(), delimiter=",", ndmin=2)
            if body.strip()
            else np.zeros((0, len(header)))
        )
    except ValueError as exc:
        raise FormatError(f"{path}: not a table of numbers: {exc}") from exc
    col = {name: data[:, i] for i, name in enumerate(header)}
    nan = np.full(len(data), np.nan)
    xy = col.get("uncertainty_xy [nm]", nan)
    precision = np.column_stack(
        [col.get("uncertainty_x [nm]", xy), col.get("uncertainty_y [nm]", xy)]
        + [col.get("uncertainty_z [nm]", nan)]
    )
    known = set(CSV_HEADER)
    return LocTable(
        col["frame"].astype(np.int64) - 1,
        data[:, 1:4],
        col["confidence"],
        {name: col[name] for name in header if name not in known},
        col.get("intensity [photon]", nan),
        col.get("offset [photon]", nan),
        precision,
    )


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
    have = set(rec.dtype.names or ())
    missing = [n for n in ("frame", "x", "y") if n not in have]
    if missing:
        raise FormatError(f"{path}: the 'locs' dataset has no field {', '.join(missing)}")

    def column(name: str, scale: float = 1.0, default: float = np.nan) -> np.ndarray:
        return rec[name].astype(np.float64) * scale if name in have else np.full(len(rec), default)

    xyz = np.column_stack([column("x", px), column("y", px), column("z", default=0.0)])
    precision = np.column_stack([column("lpx", px), column("lpy", px), column("lpz")])
    table = LocTable(
        rec["frame"].astype(np.int64),
        xyz,
        column("confidence", default=1.0),
        {n: rec[n].astype(np.float64) for n in rec.dtype.names if n not in PICASSO_FIELDS},
        column("photons"),
        column("bg"),
        precision,
    )
    return table, info
