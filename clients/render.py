"""Super-resolution images from localizations (paper Fig. 11b), depth colour-coded.

Localizations are binned on a lateral grid of ``nm_per_px``; every pixel keeps a count
and the sum of its z, so the image shows density as brightness and mean depth as colour
(a colour map over ``z_range_nm``). Three modes:

* ``hist``: each localization counts in the pixel it falls in;
* ``gauss``: the histogram blurred with one Gaussian of ``sigma_nm`` before colouring;
* ``precision``: each localization is a Gaussian of its own lateral precision (x and y
  sigma, Picasso's "individual localization precision" blur), integrated over the image
  pixels, so a precise one is sharp and an uncertain one spread out. Localizations without
  a precision (NaN: a model without photometry) get ``sigma_nm``; precisions are taken no
  smaller than ``min_sigma_nm`` and cut at ``MAX_RADIUS_PX`` pixels.

:class:`DepthHistogram` is the accumulator, shared with the live dashboard (which adds
localizations as they stream in); :func:`save_image` writes a PNG or TIFF with a labelled
colour bar.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.errors import FormatError

RenderMode = Literal["hist", "gauss", "precision"]
RENDER_MODES: tuple[str, ...] = ("hist", "gauss", "precision")
DEFAULT_CMAP = "turbo"
GROW_STEP_PX = 256
MAX_RADIUS_PX = 64  # a precision blur reaches at most this far (4 sigma otherwise)
SPLAT_CHUNK = 8192  # localizations splatted at once (memory: chunk x window^2 floats)


class RenderSettings(BaseModel):
    """How localizations become an image. Lengths in nm."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nm_per_px: float = Field(20.0, description="nm per pixel of the image")
    mode: RenderMode = Field("hist", description="render mode")
    sigma_nm: float = Field(
        20.0,
        gt=0,
        description="Gaussian width in gauss mode; in precision mode, of localizations "
        "without a precision",
    )
    min_sigma_nm: float = Field(0.0, ge=0, description="smallest blur in precision mode")
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
        if mode not in RENDER_MODES:
            raise ValueError(f"render mode must be 'hist', 'gauss' or 'precision', got {mode!r}")
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

    def add(self, xyz_nm: np.ndarray, sigma_xy_nm: np.ndarray | None = None) -> None:
        """Add ``(N, 3)`` positions, nm; with ``(N, 2)`` lateral sigmas (nm, finite and
        positive, :func:`lateral_sigma_nm`) each as a pixel-integrated Gaussian."""
        xyz = np.asarray(xyz_nm, np.float64).reshape(-1, 3)
        col = np.floor(xyz[:, 0] / self.nm_per_px).astype(np.int64)
        row = np.floor(xyz[:, 1] / self.nm_per_px).astype(np.int64)
        if len(xyz) and (row.max() >= self.shape[0] or col.max() >= self.shape[1]):
            self._grow(int(row.max()) + 1, int(col.max()) + 1)
        h, w = self.shape
        ok = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        if sigma_xy_nm is None:
            flat = row[ok] * w + col[ok]
            self._accumulate(flat, np.ones(len(flat)), xyz[ok, 2])
        else:
            sigma = np.asarray(sigma_xy_nm, np.float64).reshape(-1, 2)
            self._splat(xyz[ok], sigma[ok] / self.nm_per_px)
        self.total += int(ok.sum())
        self.outside += int((~ok).sum())

    def _accumulate(self, flat: np.ndarray, weight: np.ndarray, z: np.ndarray) -> None:
        n = self.counts.size
        self.counts.ravel()[:] += np.bincount(flat, weight, minlength=n).astype(np.float32)
        self.zsum.ravel()[:] += np.bincount(flat, weight * z, minlength=n).astype(np.float32)

    def _splat(self, xyz: np.ndarray, sigma_px: np.ndarray) -> None:
        """Each localization's Gaussian integrated over the pixels around it, in chunks
        of similar width (so one wide blur does not widen every window)."""
        u, v = xyz[:, 0] / self.nm_per_px, xyz[:, 1] / self.nm_per_px
        order = np.argsort(sigma_px.max(axis=1))
        h, w = self.shape
        for start in range(0, len(order), SPLAT_CHUNK):
            i = order[start : start + SPLAT_CHUNK]
            radius = min(int(np.ceil(4 * sigma_px[i].max())) + 1, MAX_RADIUS_PX)
            offsets = np.arange(-radius, radius + 1)
            cols, wx = _pixel_weights(u[i], sigma_px[i, 0], offsets)
            rows, wy = _pixel_weights(v[i], sigma_px[i, 1], offsets)
            weight = wy[:, :, None] * wx[:, None, :]  # (n, K, K)
            inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None]
            flat = rows[:, :, None] * w + cols[:, None, :]
            z = np.broadcast_to(xyz[i, 2][:, None, None], weight.shape)
            self._accumulate(flat[inside], weight[inside], z[inside])

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


def _pixel_weights(
    centre: np.ndarray, sigma: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, K)`` pixel indices around ``(n,)`` centres (px) and the share of a 1-D
    Gaussian of ``sigma`` (px) that falls in each pixel."""
    from scipy.special import erf

    edge = np.floor(centre)[:, None] + offsets
    scale = 1 / (np.sqrt(2) * sigma)[:, None]
    lo, hi = (edge - centre[:, None]) * scale, (edge + 1 - centre[:, None]) * scale
    return edge.astype(np.int64), 0.5 * (erf(hi) - erf(lo))


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def colorize(counts: np.ndarray, zsum: np.ndarray, settings: RenderSettings) -> np.ndarray:
    """``(H, W, 3)`` uint8: brightness from counts, colour from mean z (``zsum / counts``)."""
    if settings.mode == "gauss":  # precision mode blurred each localization already
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


def lateral_sigma_nm(
    precision_nm: np.ndarray | None, n: int, settings: RenderSettings
) -> np.ndarray:
    """``(n, 2)`` blur of each localization in precision mode: its x and y precision
    (``(n, 3)`` nm, NaN where unknown), ``settings.sigma_nm`` where unknown or not
    positive, and no smaller than ``settings.min_sigma_nm``."""
    if precision_nm is None:
        sigma = np.full((n, 2), settings.sigma_nm)
    else:
        sigma = np.asarray(precision_nm, np.float64).reshape(n, 3)[:, :2].copy()
        sigma[~(np.isfinite(sigma) & (sigma > 0))] = settings.sigma_nm
    return np.maximum(sigma, max(settings.min_sigma_nm, 1e-3))


def render(
    xyz_nm: np.ndarray,
    settings: RenderSettings,
    extent_nm: tuple[float, float] | None = None,
    precision_nm: np.ndarray | None = None,
) -> np.ndarray:
    """Render ``(N, 3)`` positions (nm) into ``(H, W, 3)`` uint8.

    ``extent_nm`` is the (width, height) covered from (0, 0); default: up to the largest
    x and y in the data. ``precision_nm`` ``(N, 3)`` one-sigma x, y, z (nm, NaN where
    unknown) sets each localization's blur in ``precision`` mode.
    """
    xyz = np.asarray(xyz_nm, np.float64).reshape(-1, 3)
    if extent_nm is None:
        if not len(xyz):
            raise FormatError("no localizations to render and no extent given")
        extent_nm = (max(float(xyz[:, 0].max()), 1.0) + 1, max(float(xyz[:, 1].max()), 1.0) + 1)
    hist = DepthHistogram(settings.nm_per_px, *extent_nm, max_side_px=16384)
    keep = (xyz[:, 0] < extent_nm[0]) & (xyz[:, 1] < extent_nm[1])
    sigma = None
    if settings.mode == "precision":
        sigma = lateral_sigma_nm(precision_nm, len(xyz), settings)[keep]
    hist.add(xyz[keep], sigma)
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
