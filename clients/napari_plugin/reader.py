"""napari reader for voxloc's localization tables (CONVENTIONS.md "Files").

A ThunderSTORM CSV (``frame,x [nm],y [nm],z [nm],confidence,...``) or a Picasso HDF5
(``locs`` dataset, ``.yaml`` sidecar with the pixel size) becomes one 3D Points layer:

* data: ``(N, 3)`` float64 positions in nm, in napari's axis order ``(z, y, x)``;
* features: the file's columns as they are in the file (CSV ``frame`` counts from 1,
  Picasso's from 0; Picasso ``x`` / ``y`` and ``lpx`` / ``lpy`` in pixels), so nothing is
  lost or renamed: photometry and precision (``intensity [photon]``, ``offset [photon]``,
  ``uncertainty_xy [nm]`` ...; Picasso ``photons``, ``bg``, ``lpx`` ...) come along, NaN
  where unknown;
* face colour: z through the ``turbo`` colormap.

Files that are not voxloc tables (another CSV, an HDF5 without ``locs``) are left to
other readers: :func:`get_reader` returns None for them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.io.loctable import CSV_HEADER, LocTable, read_csv, read_hdf5
from engines.types import BASE_COLUMNS

LayerData = tuple[np.ndarray, dict[str, Any], str]
POINT_SIZE_NM = 40.0
COLORMAP = "turbo"
AXES = ("z", "y", "x")
UNITS = ("nm", "nm", "nm")


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The reader for ``path`` if it is a voxloc table, else None (npe2 convention)."""
    if isinstance(path, list):
        return None if len(path) != 1 else get_reader(path[0])
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv" and _is_voxloc_csv(p):
        return read_tables
    if suffix in (".h5", ".hdf5") and _has_locs(p):
        return read_tables
    return None


def read_tables(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, str | Path) else list(path)
    return [table_layer(Path(p)) for p in paths]


def table_layer(path: Path) -> LayerData:
    """One Points layer tuple for a CSV or HDF5 table; FormatError if it is not one."""
    if path.suffix.lower() == ".csv":
        table = read_csv(path)
        features = _csv_columns(path, table)
        z_key, px_nm = "z [nm]", None
    else:
        table, info = read_hdf5(path)
        features = _hdf5_columns(path)
        z_key = "z"
        px_nm = next(d["Pixelsize"] for d in info if isinstance(d, dict) and "Pixelsize" in d)
    return points_layer(
        table.xyz_nm,
        features,
        name=path.stem,
        z_key=z_key,
        metadata={"source": str(path), "px_nm": px_nm, "rows": len(table)},
    )


def points_layer(
    xyz_nm: np.ndarray,
    features: dict[str, np.ndarray],
    *,
    name: str,
    z_key: str,
    metadata: dict[str, Any] | None = None,
) -> LayerData:
    """``xyz_nm``: ``(N, 3)`` (x, y, z) in nm -> a Points layer tuple in ``(z, y, x)``."""
    kwargs: dict[str, Any] = {
        "name": name,
        "ndim": 3,
        "features": features,
        "size": POINT_SIZE_NM,
        "border_width": 0,
        "axis_labels": AXES,
        "units": UNITS,
        "metadata": dict(metadata or {}),
    }
    if len(xyz_nm):  # a colormap needs values to set its range from
        kwargs.update(face_color=z_key, face_colormap=COLORMAP)
    return zyx(xyz_nm), kwargs, "points"


def zyx(xyz_nm: np.ndarray) -> np.ndarray:
    """``(N, 3)`` (x, y, z) -> ``(N, 3)`` float64 (z, y, x), as napari orders axes."""
    return np.asarray(xyz_nm, dtype=np.float64).reshape(-1, 3)[:, ::-1].copy()


def _csv_columns(path: Path, table: LocTable) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    # as in the file: ThunderSTORM frames count from 1 (csv_columns does so too)
    cols = dict(zip(CSV_HEADER, table.csv_columns(), strict=True)) | table.extra
    return {name: cols[name] for name in header}


def _hdf5_columns(path: Path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        rec = f["locs"][...]
    return {name: np.asarray(rec[name]) for name in rec.dtype.names}


def _is_voxloc_csv(path: Path) -> bool:
    try:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return False
    return tuple(header[:5]) == BASE_COLUMNS


def _has_locs(path: Path) -> bool:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "locs" in f
    except (ImportError, OSError):
        return False


__all__ = ["get_reader", "points_layer", "read_tables", "zyx"]
