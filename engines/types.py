"""Types shared across engines, service and clients."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Column order of localization arrays on the wire and in the CSV (CONVENTIONS.md).
LOC_COLUMNS: tuple[str, ...] = ("frame", "x [nm]", "y [nm]", "z [nm]", "confidence")

# Pixel types stacks on disk and engines take (engines compute in float32): uint16 and
# float32 are what cameras and ImageJ write, the others are accepted too.
ACCEPTED_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in ("uint16", "float32", "uint8", "int16", "int32", "float64")
)
ACCEPTED_DTYPE_NAMES = (
    f"{ACCEPTED_DTYPES[0]} or {ACCEPTED_DTYPES[1]} "
    f"(or {', '.join(str(t) for t in ACCEPTED_DTYPES[2:])})"
)


_UNKNOWN = np.full(0, np.nan, np.float32)  # default of the photometry fields: NaN, N rows


@dataclass(frozen=True)
class Localizations:
    """Localizations of one frame (one time point).

    Attributes:
        frame: frame index, counting from 0.
        xyz_nm: ``(N, 3)`` float32 positions (x, y, z), nm, CONVENTIONS.md geometry.
        confidence: ``(N,)`` float32 voxel probability in [0, 1].
        photons: ``(N,)`` float32 photons of the molecule summed over the planes
            (after baseline, gain and QE); NaN where unknown.
        background: ``(N,)`` float32 background per pixel and plane, photons; NaN where
            unknown.
        precision_nm: ``(N, 3)`` float32 one-sigma precision of x, y, z, nm; NaN where
            unknown.
    """

    frame: int
    xyz_nm: np.ndarray
    confidence: np.ndarray
    photons: np.ndarray = field(default_factory=lambda: _UNKNOWN)
    background: np.ndarray = field(default_factory=lambda: _UNKNOWN)
    precision_nm: np.ndarray = field(default_factory=lambda: _UNKNOWN)

    def __post_init__(self) -> None:
        n = int(self.confidence.shape[0])
        for name, shape in (("photons", (n,)), ("background", (n,)), ("precision_nm", (n, 3))):
            if getattr(self, name) is _UNKNOWN:
                object.__setattr__(self, name, np.full(shape, np.nan, np.float32))

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    def to_array(self) -> np.ndarray:
        """``(N, 5)`` float64 rows in :data:`LOC_COLUMNS` order (frame counts from 0)."""
        out = np.empty((len(self), 5), dtype=np.float64)
        out[:, 0] = self.frame
        out[:, 1:4] = self.xyz_nm
        out[:, 4] = self.confidence
        return out

    def with_xyz(self, xyz_nm: np.ndarray) -> Localizations:
        """The same localizations at other positions (photometry and precision kept)."""
        return replace(self, xyz_nm=np.asarray(xyz_nm, np.float32))

    @classmethod
    def from_array(cls, frame: int, rows: np.ndarray) -> Localizations:
        rows = np.asarray(rows).reshape(-1, 5)
        return cls(frame, rows[:, 1:4].astype(np.float32), rows[:, 4].astype(np.float32))

    @classmethod
    def empty(cls, frame: int) -> Localizations:
        return cls(frame, np.zeros((0, 3), np.float32), np.zeros((0,), np.float32))
