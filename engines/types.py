"""Types shared across engines, service and clients."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Column order of localization arrays on the wire and in the CSV (CONVENTIONS.md): the
# position and confidence, then photometry (photons summed over the planes; background per
# pixel and plane) and the one-sigma precision per axis, ThunderSTORM's names and units.
BASE_COLUMNS: tuple[str, ...] = ("frame", "x [nm]", "y [nm]", "z [nm]", "confidence")
PHOTOMETRY_COLUMNS: tuple[str, ...] = (
    "intensity [photon]",
    "offset [photon]",
    "uncertainty_x [nm]",
    "uncertainty_y [nm]",
    "uncertainty_z [nm]",
)
LOC_COLUMNS: tuple[str, ...] = BASE_COLUMNS + PHOTOMETRY_COLUMNS
# Files and messages from before photometry (wire version 1) carry only BASE_COLUMNS.
LEGACY_LOC_COLUMNS: tuple[str, ...] = BASE_COLUMNS

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
        chi2: ``(N,)`` float32 goodness of fit: the photometry window fit's mean squared
            residual per pixel in units of the camera's noise variance (about 1 for a
            lone molecule the PSF model describes, larger for two molecules blended into
            one localization or a neighbour's light); NaN where unknown. Files carry it
            (ThunderSTORM's ``chi2`` column); wire messages do not.
    """

    frame: int
    xyz_nm: np.ndarray
    confidence: np.ndarray
    photons: np.ndarray = field(default_factory=lambda: _UNKNOWN)
    background: np.ndarray = field(default_factory=lambda: _UNKNOWN)
    precision_nm: np.ndarray = field(default_factory=lambda: _UNKNOWN)
    chi2: np.ndarray = field(default_factory=lambda: _UNKNOWN)

    def __post_init__(self) -> None:
        n = int(self.confidence.shape[0])
        for name, shape in (
            ("photons", (n,)),
            ("background", (n,)),
            ("precision_nm", (n, 3)),
            ("chi2", (n,)),
        ):
            if getattr(self, name) is _UNKNOWN:
                object.__setattr__(self, name, np.full(shape, np.nan, np.float32))

    def __len__(self) -> int:
        return int(self.confidence.shape[0])

    def to_array(self) -> np.ndarray:
        """``(N, 10)`` float64 rows in :data:`LOC_COLUMNS` order (frame counts from 0;
        NaN where photometry or precision is unknown); :attr:`chi2` is not a column."""
        out = np.empty((len(self), len(LOC_COLUMNS)), dtype=np.float64)
        out[:, 0] = self.frame
        out[:, 1:4] = self.xyz_nm
        out[:, 4] = self.confidence
        out[:, 5] = self.photons
        out[:, 6] = self.background
        out[:, 7:10] = self.precision_nm
        return out

    def with_xyz(self, xyz_nm: np.ndarray) -> Localizations:
        """The same localizations at other positions (photometry and precision kept)."""
        return replace(self, xyz_nm=np.asarray(xyz_nm, np.float32))

    @classmethod
    def from_array(cls, frame: int, rows: np.ndarray) -> Localizations:
        """From ``(N, 10)`` rows in :data:`LOC_COLUMNS` order, or the ``(N, 5)`` rows of
        :data:`LEGACY_LOC_COLUMNS` (photometry and precision then NaN)."""
        rows = np.asarray(rows)
        width = rows.shape[-1] if rows.ndim == 2 else len(LOC_COLUMNS)
        if width not in (len(LOC_COLUMNS), len(LEGACY_LOC_COLUMNS)):
            raise ValueError(
                f"expected rows of {len(LOC_COLUMNS)} (or {len(LEGACY_LOC_COLUMNS)}) "
                f"localization columns, got shape {rows.shape}"
            )
        rows = rows.reshape(-1, width)
        xyz, conf = rows[:, 1:4].astype(np.float32), rows[:, 4].astype(np.float32)
        if width == len(LEGACY_LOC_COLUMNS):
            return cls(frame, xyz, conf)
        f32 = np.float32
        return cls(
            frame,
            xyz,
            conf,
            rows[:, 5].astype(f32),
            rows[:, 6].astype(f32),
            rows[:, 7:10].astype(f32),
        )

    @classmethod
    def empty(cls, frame: int) -> Localizations:
        return cls(frame, np.zeros((0, 3), np.float32), np.zeros((0,), np.float32))
