"""Super-resolution images from localizations (paper Fig. 11b), depth colour-coded.

Localizations are binned on a lateral grid of ``nm_per_px``; every pixel keeps a count
and the sum of its z, so the image shows density as brightness and mean depth as colour
(a colour map over ``z_range_nm``). ``gauss`` mode blurs both with a Gaussian of
``sigma_nm`` before colouring. :class:`DepthHistogram` is the accumulator, shared with the
live dashboard (which adds localizations as they stream in); :func:`save_image` writes a
PNG or TIFF with a labelled colour bar.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.errors import FormatError

RenderMode = Literal["hist", "gauss"]
DEFAULT_CMAP = "turbo"
GROW_STEP_PX = 256


class RenderSettings(BaseModel):
    """How localizations become an image. Lengths in nm."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nm_per_px: float = Field(20.0, description="nm per pixel of the image")
    mode: RenderMode = Field("hist", description="render mode")
    sigma_nm: float = Field(20.0, gt=0, description="Gaussian width in gauss mode")
    z_range_nm: tuple[float, float] = Field((0.0, 1600.0), description="depth of the colour map")
    cmap: str = DEFAULT_CMAP
    # brightness saturates at this percentile of counts
    saturate_percentile: float = Field(99.5, gt=0, le=100)
    gamma: float = 0.7

    @field_validator("nm_per_px")
    @classmethod
    def _scale(cls, nm_per_px: float) -> float:
        if not 0 < nm_per_px <= 10_000:
            raise ValueError(f"nm per pixel must be in (0, 10000], got {nm_per_px}")
        return nm_per_px

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, mode: object) -> object:
        if mode not in ("hist", "gauss"):
            raise ValueError(f"render mode must be 'hist' or 'gauss', got {mode!r}")
        return mode

    @field_validator("z_range_nm")
    @classmethod
    def _increasing(cls, z_range_nm: tuple[float, float]) -> tuple[float, float]:
        if not z_range_nm[1] > z_range_nm[0]:
            raise ValueError(f"z range must increase, got {z_range_nm}")
        return z_range_nm

    @field_validator("cmap")
    @classmethod
    def _known_cmap(cls, cmap: str) -> str:
        lut(cmap)  # fail early on an unknown colour map
        return cmap


def lut(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8 colour table of a matplotlib colour map."""
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError as exc:
        raise ValueError(f"unknown colour map {cmap!r}; try turbo, jet, viridis") from exc
    return (cm(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


class DepthHistogram:
    """Counts and z sums of localizations on a lateral grid starting at (0, 0) nm.

    The grid grows (in steps of 256 px, up to ``max_side_px``) when localizations land
    beyond it; those still outside are counted in :attr:`outside`.
    """

    def __init__(
        self, nm_per_px: float, width_nm: float, height_nm: float, *, max_side_px: int = 4096
    ) -> None:
        if nm_per_px <= 0 or width_nm <= 0 or height_nm <= 0:
            raise ValueError(
                f"need positive nm per px and extent, got {nm_per_px}, {width_nm} x {height_nm} nm"
            )
        self.nm_per_px = float(nm_per_px)
        self.max_side_px = int(max_side_px)
        h = min(math.ceil(height_nm / nm_per_px), self.max_side_px)
        w = min(math.ceil(width_nm / nm_per_px), self.max_side_px)
        self.counts = np.zeros((h, w), np.float32)
        self.zsum = np.zeros((h, w), np.float32)
        self.total = 0
        self.outside = 0

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.counts.shape
        return h, w

    def reset(self) -> None:
        self.counts[:] = 0
        self.zsum[:] = 0
        self.total = self.outside = 0

    def add(self, xyz_nm: np.ndarray) -> None:
        """Add ``(N, 3)`` positions, nm."""
        xyz = np.asarray(xyz_nm, np.float64).reshape(-1, 3)
        col = np.floor(xyz[:, 0] / self.nm_per_px).astype(np.int64)
        row = np.floor(xyz[:, 1] / self.nm_per_px).astype(np.int64)
        if len(xyz) and (row.max() >= self.shape[0] or col.max() >= self.shape[1]):
            self._grow(int(row.max()) + 1, int(col.max()) + 1)
        h, w = self.shape
        ok = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        flat = row[ok] * w + col[ok]
        self.counts.ravel()[:] += np.bincount(flat, minlength=h * w).astype(np.float32)
        self.zsum.ravel()[:] += np.bincount(flat, xyz[ok, 2], minlength=h * w).astype(np.float32)
        self.total += int(ok.sum())
        self.outside += int((~ok).sum())

    def _grow(self, rows: int, cols: int) -> None:
        h, w = self.shape
        new_h = min(max(h, _round_up(rows, GROW_STEP_PX)), self.max_side_px)
        new_w = min(max(w, _round_up(cols, GROW_STEP_PX)), self.max_side_px)
        if (new_h, new_w) == (h, w):
            return
        for name in ("counts", "zsum"):
            old = getattr(self, name)
            grown = np.zeros((new_h, new_w), np.float32)
            grown[:h, :w] = old
            setattr(self, name, grown)

    def rgb(self, settings: RenderSettings) -> np.ndarray:
        return colorize(self.counts, self.zsum, settings)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def colorize(counts: np.ndarray, zsum: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """``(H, W, 3)`` uint8: brightness from counts, colour from mean z (``zsum / counts``)."""
    if settings.mode == "gauss":
        from scipy.ndimage import gaussian_filter

        sigma_px = settings.sigma_nm / settings.nm_per_px
        counts = gaussian_filter(counts, sigma_px, mode="constant")
        zsum = gaussian_filter(zsum, sigma_px, mode="constant")
    filled = counts > 1e-6
    if not filled.any():
        return np.zeros(counts.shape + (3,), np.uint8)
    vmax = float(np.percentile(counts[filled], settings.saturate_percentile))
    bright = np.clip(counts / max(vmax, 1e-6), 0.0, 1.0) ** settings.gamma
    lo, hi = settings.z_range_nm
    zmean = np.divide(zsum, counts, out=np.full_like(zsum, lo), where=filled)
    idx = np.clip((zmean - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return (lut(settings.cmap)[idx] * bright[..., None]).round().astype(np.uint8)


def render(
    xyz_nm: np.ndarray, settings: RenderSettings, extent_nm: tuple[float, float] | None = None
) -> np.ndarray:
    """Render ``(N, 3)`` positions (nm) into ``(H, W, 3)`` uint8.

    ``extent_nm`` is the (width, height) covered from (0, 0); default: up to the largest
    x and y in the data.
    """
    xyz = np.asarray(xyz_nm, np.float64).reshape(-1, 3)
    if extent_nm is None:
        if not len(xyz):
            raise FormatError("no localizations to render and no extent given")
        extent_nm = (max(float(xyz[:, 0].max()), 1.0) + 1, max(float(xyz[:, 1].max()), 1.0) + 1)
    hist = DepthHistogram(settings.nm_per_px, *extent_nm, max_side_px=16384)
    hist.add(xyz[(xyz[:, 0] < extent_nm[0]) & (xyz[:, 1] < extent_nm[1])])
    return hist.rgb(settings)


def colorbar_stops(cmap: str, n: int = 11) -> list[str]:
    """CSS colours along the colour map (for the dashboard's colour bar)."""
    table = lut(cmap)[np.linspace(0, 255, n).round().astype(int)]
    return [f"rgb({r},{g},{b})" for r, g, b in table]


def with_colorbar(rgb: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """The image with a labelled depth colour bar (z, nm) on its right."""
    from PIL import Image, ImageDraw, ImageFont

    h, w, _ = rgb.shape
    bar_h = max(h, 160)
    bar_w, margin, label_w = 16, 10, 70
    canvas = Image.new("RGB", (w + margin + bar_w + label_w, bar_h), "black")
    canvas.paste(Image.fromarray(rgb), (0, 0))
    colours = lut(settings.cmap)[::-1]  # top = far (high z)
    rows = np.linspace(0, 255, bar_h - 20).round().astype(int)
    bar = np.repeat(colours[rows][:, None, :], bar_w, axis=1)
    x0 = w + margin
    canvas.paste(Image.fromarray(bar), (x0, 10))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    lo, hi = settings.z_range_nm
    for frac in (0.0, 0.5, 1.0):
        y = 10 + (1 - frac) * (bar_h - 21)
        draw.text(
            (x0 + bar_w + 4, max(y - 6, 0)), f"{lo + frac * (hi - lo):.0f}", fill="white", font=font
        )
    draw.text((x0 + bar_w + 4, bar_h // 2 + 12), "z [nm]", fill="white", font=font)
    return np.asarray(canvas)


def save_image(
    path: str | Path, rgb: np.ndarray, settings: RenderSettings, *, colorbar: bool = True
) -> Path:
    """Write ``rgb`` as PNG or TIFF (chosen by extension), with a colour bar by default."""
    from PIL import Image

    from engines.io.atomic import atomic_output

    path = Path(path)
    fmt = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower())
    if fmt is None:
        raise FormatError(f"output {path}: expected a .png, .tif or .tiff file name")
    out = with_colorbar(rgb, settings) if colorbar else rgb
    dpi = 25.4e6 / settings.nm_per_px  # pixels per inch at the rendered scale
    with atomic_output(path) as tmp:
        Image.fromarray(out).save(tmp, format=fmt, dpi=(dpi, dpi) if fmt == "TIFF" else None)
    return path
