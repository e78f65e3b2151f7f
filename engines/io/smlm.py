"""SMLM files (``.smlm``): the smlm-file-format 0.2 of ShareLoc and locan.

A ZIP archive (DEFLATE, ZIP64) with ``manifest.json`` and one binary table
``table-0.bin``: row-interleaved little-endian records with the format's built-in
headers, units in the manifest:

=================  =======  ======  ==========================================
header             dtype    unit    meaning
=================  =======  ======  ==========================================
``frame``          uint32   frame   frame index, counting from **0**
``x``, ``y``, ``z``  float32  nm      position (CONVENTIONS.md geometry)
``confidence``     float32  1       the network's voxel probability
``intensity``      float32  photon  photons summed over the planes
``background``     float32  photon  background per pixel and plane
``x_precision`` .. float32  nm      one-sigma precision of x, y, z
=================  =======  ======  ==========================================

then extra columns (float32). NaN where unknown. The table's metadata (the Picasso yaml
documents: frames, size, pixel size, camera, model) is under the manifest's ``voxloc``
key. The archive is written at :meth:`SmlmWriter.commit` (rows go to a temp file first),
so ``.smlm`` is a batch format: streamed recordings use CSV or HDF5.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import FormatError
from engines.io.atomic import discard, reserve_temp
from engines.io.loctable import LocTable, TableMeta, TableWriter, picasso_info

FORMAT_VERSION = "0.2"
TABLE_FORMAT = "smlm-table(binary)"
TABLE_FILE = "table-0.bin"
# (header, dtype, unit) of the columns before the extra ones
SMLM_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("frame", "uint32", "frame"),
    ("x", "float32", "nm"),
    ("y", "float32", "nm"),
    ("z", "float32", "nm"),
    ("confidence", "float32", "1"),
    ("intensity", "float32", "photon"),
    ("background", "float32", "photon"),
    ("x_precision", "float32", "nm"),
    ("y_precision", "float32", "nm"),
    ("z_precision", "float32", "nm"),
)
LENGTH_UNITS = {"nm": 1.0, "um": 1e3, "pm": 1e-3, "angstrom": 0.1}


def smlm_dtype(extra_columns: Sequence[str] = ()) -> np.dtype:
    columns = [(name, dtype) for name, dtype, _ in SMLM_COLUMNS]
    columns += [(c, "float32") for c in extra_columns]
    return np.dtype([(name, np.dtype(dt).newbyteorder("<")) for name, dt in columns])


class SmlmWriter(TableWriter):
    """Rows to a temp binary file; :meth:`commit` zips it with the manifest into place."""

    def __init__(self, path: Path, meta: TableMeta, extra_columns: Sequence[str] = ()) -> None:
        super().__init__(path, meta, extra_columns)
        self.dtype = smlm_dtype(self.extra_columns)
        self._bin = reserve_temp(self.path.with_name(self.path.name + ".bin"))
        self._fh = open(self._bin, "wb")  # noqa: SIM115 - closed in _finish

    def _append(self, table: LocTable) -> None:
        rec = np.zeros(len(table), self.dtype)
        rec["frame"] = table.frame
        for i, axis in enumerate("xyz"):
            rec[axis] = table.xyz_nm[:, i]
            rec[f"{axis}_precision"] = table.precision_nm[:, i]
        rec["confidence"] = table.confidence
        rec["intensity"] = table.photons
        rec["background"] = table.background
        for c in self.extra_columns:
            rec[c] = table.extra[c]
        self._fh.write(rec.tobytes())

    def _finish(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def _temps(self) -> list[Path]:
        return [self._tmp, self._bin]

    def commit(self) -> Path:
        self._finish()
        manifest = smlm_manifest(self.meta, self.rows, self.extra_columns)
        with zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=1))
            zf.write(self._bin, TABLE_FILE)
        discard([self._bin])
        return super().commit()


def smlm_manifest(meta: TableMeta, rows: int, extra_columns: Sequence[str]) -> dict[str, Any]:
    headers = [name for name, _, _ in SMLM_COLUMNS] + list(extra_columns)
    return {
        "format_version": FORMAT_VERSION,
        "formats": {
            TABLE_FORMAT: {
                "name": TABLE_FORMAT,
                "type": "table",
                "mode": "binary",
                "extension": ".bin",
                "columns": len(headers),
                "headers": headers,
                "dtype": [dt for _, dt, _ in SMLM_COLUMNS] + ["float32"] * len(extra_columns),
                "shape": [1] * len(headers),
                "units": [u for _, _, u in SMLM_COLUMNS] + ["1"] * len(extra_columns),
                "description": "voxloc localizations (frame from 0; NaN where unknown)",
            }
        },
        "files": [
            {
                "name": TABLE_FILE,
                "type": "table",
                "format": TABLE_FORMAT,
                "channel": "default",
                "rows": int(rows),
                "offset": {},
            }
        ],
        "name": Path(meta.source).stem if meta.source else "voxloc",
        "description": f"3D localizations by {meta.generated_by}",
        "tags": ["SMLM", "3D", "voxloc"],
        "date": time.strftime("%Y-%m-%d"),
        "voxloc": picasso_info(meta),
    }


def read_smlm(path: Path) -> tuple[LocTable, dict[str, Any]]:
    """The first table of an ``.smlm`` file (lengths converted to nm) and the manifest."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            info = next(f for f in manifest["files"] if f.get("type") == "table")
            fmt = manifest["formats"][info["format"]]
            data = zf.read(info["name"])
    except (OSError, zipfile.BadZipFile, KeyError, StopIteration, ValueError) as exc:
        raise FormatError(f"{path}: not an SMLM file with a table: {exc!r}") from exc
    if fmt.get("mode") != "binary" or any(s != 1 for s in fmt["shape"]):
        raise FormatError(f"{path}: only binary tables of scalar columns are read")
    dtype = np.dtype(
        [
            (h, np.dtype(d).newbyteorder("<"))
            for h, d in zip(fmt["headers"], fmt["dtype"], strict=True)
        ]
    )
    rows = int(info["rows"])
    if len(data) != rows * dtype.itemsize:
        raise FormatError(f"{path}: {len(data)} bytes for {rows} rows of {dtype.itemsize}")
    rec = np.frombuffer(data, dtype)
    names = dtype.names or ()
    units = dict(zip(fmt["headers"], fmt.get("units", []), strict=False))

    def column(name: str, default: float = np.nan) -> np.ndarray:
        if name not in names:
            return np.full(rows, default)
        scale = 1.0
        if name in ("x", "y", "z") or name.endswith("_precision"):
            unit = units.get(name, "nm") or "nm"
            if unit not in LENGTH_UNITS:
                raise FormatError(f"{path}: column {name!r} in {unit!r}, expected nm")
            scale = LENGTH_UNITS[unit]
        return rec[name].astype(np.float64) * scale

    known = {name for name, _, _ in SMLM_COLUMNS}
    table = LocTable(
        column("frame", 0).astype(np.int64),
        np.column_stack([column("x"), column("y"), column("z", 0.0)]),
        column("confidence", 1.0),
        {n: rec[n].astype(np.float64) for n in names if n not in known},
        column("intensity"),
        column("background"),
        np.column_stack([column(f"{a}_precision") for a in "xyz"]),
    )
    return table, manifest
