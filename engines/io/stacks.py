"""Input stacks (CONVENTIONS.md "Files"): one TZYX / TCYX TIFF, or one TIFF per plane.

A :class:`Stack` reads frames in batches without loading the whole file: uncompressed
TIFFs are memory-mapped, others (compressed, tiled) are read page by page. Pages of a
TIFF whose axes do not say which is time (a plain image sequence) are taken as
frame-major, plane-minor.
"""

from __future__ import annotations

import logging
import math
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

from engines.errors import FormatError
from engines.types import ACCEPTED_DTYPE_NAMES, ACCEPTED_DTYPES

log = logging.getLogger(__name__)

PLANE_AXES = "ZCS"  # axis labels that may hold the focal planes


class TiffSource:
    """One TIFF file seen as ``(frames, planes, height, width)``.

    Args:
        path: the file.
        planes: planes per frame expected when the file's axes do not say (a plain
            sequence of pages is split frame-major, plane-minor into this many planes).
    """

    def __init__(self, path: str | Path, planes: int) -> None:
        self.path = Path(path)
        self._tif = _open_tiff(self.path)
        try:
            self._setup(planes)
        except BaseException:
            self._tif.close()
            raise

    def _setup(self, planes: int) -> None:
        series = self._tif.series[0]
        self.axes: str = series.axes
        self.shape: tuple[int, ...] = tuple(series.shape)
        if math.prod(self.shape) == 0 or len(self._tif.pages) == 0:
            raise FormatError(f"{self.path}: empty stack (shape {self.shape}, no pixels)")
        self.dtype = np.dtype(series.dtype).newbyteorder("=")
        if self.dtype not in ACCEPTED_DTYPES:
            raise FormatError(
                f"{self.path}: expected {ACCEPTED_DTYPE_NAMES} pixels, got {self.dtype}"
            )
        if "Y" not in self.axes or "X" not in self.axes:
            raise FormatError(f"{self.path}: no image axes Y, X in TIFF axes {self.axes!r}")
        self._y, self._x = self.axes.index("Y"), self.axes.index("X")
        self.height, self.width = self.shape[self._y], self.shape[self._x]
        self._check_complete()
        self._roles(planes)
        self._map: mmap.mmap | None = None
        self._mm = self._try_memmap(series)
        if self._mm is None:
            page_shape = tuple(series.keyframe.shape)
            nlead = len(self.shape) - len(page_shape)
            if nlead < 0 or self.shape[nlead:] != page_shape:
                raise FormatError(
                    f"{self.path}: unsupported TIFF layout (shape {self.shape}, "
                    f"pages of shape {page_shape})"
                )
            self._lead_shape = self.shape[:nlead]

    def _check_complete(self) -> None:
        """ImageJ files state their image count: a truncated file holds fewer."""
        meta = self._tif.imagej_metadata or {}
        stated = int(meta.get("images", 0) or 0)
        held = math.prod(self.shape) // (self.height * self.width)
        if stated > held:
            raise FormatError(
                f"{self.path}: truncated or corrupted TIFF: its ImageJ metadata "
                f"states {stated} images, the file holds {held}"
            )

    def _roles(self, planes: int) -> None:
        """Find the frame and plane axes among the non-image axes."""
        others = [i for i, a in enumerate(self.axes) if a not in "YX"]
        self._merged: int | None = None
        self._frame_ax: int | None = None
        self._plane_ax: int | None = None
        if not others:
            self.frames, self.planes = 1, 1
        elif len(others) == 1:
            (o,) = others
            if self.axes[o] == "T":
                self.frames, self.planes, self._frame_ax = self.shape[o], 1, o
            elif self.shape[o] % planes:
                raise FormatError(
                    f"{self.path}: {self.shape[o]} images (axes {self.axes}) is not a "
                    f"multiple of {planes} planes"
                )
            else:
                self.frames, self.planes, self._merged = self.shape[o] // planes, planes, o
        elif len(others) == 2:
            a, b = others
            if self.axes[b] == "T":
                a, b = b, a
            if self.axes[a] != "T" and {self.axes[a], self.axes[b]} <= set(PLANE_AXES):
                raise FormatError(
                    f"{self.path}: ambiguous axes {self.axes}; "
                    "expected TZYX or TCYX (frames, planes, rows, columns)"
                )
            self._frame_ax, self._plane_ax = a, b
            self.frames, self.planes = self.shape[a], self.shape[b]
        else:
            raise FormatError(
                f"{self.path}: unsupported axes {self.axes} (shape {self.shape}); "
                "expected TZYX or TCYX"
            )

    def _try_memmap(self, series: tifffile.TiffPageSeries) -> np.ndarray | None:
        """A read-only view of the file's pixels if they lie contiguous and uncompressed."""
        offset = series.dataoffset
        dtype = np.dtype(series.dtype).newbyteorder(self._tif.byteorder)  # the file's order
        if offset is None:
            return None
        nbytes = math.prod(self.shape) * dtype.itemsize
        if offset + nbytes > self.path.stat().st_size:
            log.warning("%s: file shorter than its pixel data (truncated?)", self.path)
            return None
        with open(self.path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return np.ndarray(self.shape, dtype=dtype, buffer=self._map, offset=offset)

    def _release_pages(self) -> None:
        """Drop mapped pages already read, so resident memory stays at about one batch."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    @property
    def memory_mapped(self) -> bool:
        return self._mm is not None

    def _index(self, t0: int, t1: int) -> tuple:
        """Index of frames [t0, t1) into the series array (all planes, rows, columns)."""
        idx: list = [slice(None)] * len(self.shape)
        if self._merged is not None:
            idx[self._merged] = slice(t0 * self.planes, t1 * self.planes)
        elif self._frame_ax is not None:
            idx[self._frame_ax] = slice(t0, t1)
        return tuple(idx)

    def _order(self) -> list[int]:
        """Axis order (frame, plane, Y, X) of the array that :meth:`_index` selects."""
        lead = [a for a in (self._merged, self._frame_ax, self._plane_ax) if a is not None]
        return lead + [self._y, self._x]

    def read(self, t0: int, t1: int) -> np.ndarray:
        """Frames ``[t0, t1)`` as a native-endian ``(n, planes, H, W)`` array (a copy)."""
        n = t1 - t0
        if self._mm is not None:
            part = np.transpose(self._mm[self._index(t0, t1)], self._order())
        else:
            part = self._read_pages(t0, t1)
        out = np.array(part, dtype=self.dtype, order="C", copy=True)  # never a memmap view
        del part
        self._release_pages()
        return out.reshape(n, self.planes, self.height, self.width)

    def _read_pages(self, t0: int, t1: int) -> np.ndarray:
        """Decode only the pages that hold frames [t0, t1); ``(n, planes, H, W)``."""
        idx = self._index(t0, t1)
        nlead = len(self._lead_shape)
        if nlead:
            numbers = np.arange(math.prod(self._lead_shape)).reshape(self._lead_shape)
            chosen = numbers[idx[:nlead]]
            sel_shape, pages = chosen.shape, [int(p) for p in chosen.ravel()]
        else:
            sel_shape, pages = (), [0]
        data = self._tif.asarray(key=pages, series=0)
        data = data.reshape(sel_shape + self.shape[nlead:])
        data = data[(slice(None),) * nlead + idx[nlead:]]
        return np.transpose(data, self._order())

    def describe(self) -> str:
        how = "memory-mapped" if self.memory_mapped else "read page by page"
        return (
            f"{self.path.name}: {self.frames} frames x {self.planes} planes of "
            f"{self.height}x{self.width} {self.dtype} (axes {self.axes}, {how})"
        )

    def close(self) -> None:
        self._mm = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view; the GC closes it later
                pass
            self._map = None
        self._tif.close()


def _open_tiff(path: Path) -> tifffile.TiffFile:
    if not path.exists():
        raise FormatError(f"input {path} does not exist")
    if path.is_dir():
        raise FormatError(f"input {path} is a directory, expected a TIFF file")
    if path.stat().st_size == 0:
        raise FormatError(f"input {path} is an empty file, expected a TIFF stack")
    try:
        return tifffile.TiffFile(path)
    except tifffile.TiffFileError as exc:
        raise FormatError(f"input {path} is not a TIFF file ({exc})") from exc


class Stack:
    """A stack of frames ``(frames, planes, height, width)`` from one or more TIFFs.

    Use :func:`open_stack`; close it (or use it as a context manager) when done.
    """

    def __init__(self, sources: Sequence[TiffSource]) -> None:
        self.sources = list(sources)
        first = self.sources[0]
        self.frames: int = first.frames
        self.height: int = first.height
        self.width: int = first.width
        self.dtype: np.dtype = first.dtype
        self.planes: int = first.planes if len(self.sources) == 1 else len(self.sources)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.planes, self.height, self.width)

    def read(self, t0: int, t1: int) -> np.ndarray:
        """Frames ``[t0, t1)``: ``(t1 - t0, planes, H, W)`` in the file's dtype."""
        if not 0 <= t0 <= t1 <= self.frames:
            raise IndexError(f"frames [{t0}, {t1}) outside the stack's {self.frames} frames")
        if len(self.sources) == 1:
            return self.sources[0].read(t0, t1)
        return np.concatenate([s.read(t0, t1) for s in self.sources], axis=1)

    def batches(self, batch: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_frame, frames)`` for consecutive batches of ``batch`` frames."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        for t0 in range(0, self.frames, batch):
            yield t0, self.read(t0, min(t0 + batch, self.frames))

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.sources)

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stack(paths: Sequence[str | Path], planes: int) -> Stack:
    """Open a multi-plane TIFF or one TIFF per plane (in plane order).

    Args:
        paths: one TZYX / TCYX TIFF, or exactly ``planes`` single-camera TIFFs.
        planes: planes per frame the consumer (the model) expects.

    Raises:
        FormatError: not a TIFF, empty, wrong plane count, or per-plane files that differ.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise FormatError("no input files given")
    if len(paths) == 1:
        src = TiffSource(paths[0], planes)
        if src.planes != planes:
            src.close()
            hint = " (give one TIFF per plane)" if src.planes == 1 else ""
            raise FormatError(
                f"{paths[0]}: expected {planes} planes per frame, got "
                f"{src.planes} (axes {src.axes}, shape {src.shape}){hint}"
            )
        return Stack([src])
    if len(paths) != planes:
        raise FormatError(f"expected one TIFF per plane ({planes} files), got {len(paths)} files")
    sources: list[TiffSource] = []
    try:
        for p in paths:
            sources.append(TiffSource(p, 1))
        _check_per_plane(sources)
    except BaseException:
        for s in sources:
            s.close()
        raise
    return Stack(sources)


def _check_per_plane(sources: list[TiffSource]) -> None:
    def what(s: TiffSource) -> str:
        return f"{s.frames} frames of {s.height}x{s.width} {s.dtype}"

    first = sources[0]
    for k, s in enumerate(sources):
        if s.planes != 1:
            raise FormatError(
                f"{s.path} (plane {k}): expected a single-camera stack, got "
                f"{s.planes} planes per frame (axes {s.axes})"
            )
        if (s.frames, s.height, s.width, s.dtype) != (
            first.frames,
            first.height,
            first.width,
            first.dtype,
        ):
            raise FormatError(
                f"per-plane files differ: {first.path} has {what(first)}, "
                f"{s.path} (plane {k}) has {what(s)}"
            )
