"""The dashboard's server side: subscribe, bin, render.

:class:`LiveImage` runs one thread that drains the localization stream, adds the
localizations to :class:`~clients.render.DepthHistogram` s in batches, and at most every
``interval_s`` (only when something arrived) renders a depth-coloured PNG. Browsers get
that PNG, never the localizations, so hundreds of frames per second cost them nothing.

Two images are kept, so the page can switch between them at any time: the plain
histogram (``hist`` and ``gauss`` modes) and the precision-blurred one (``precision``:
each localization a Gaussian of its own lateral precision, ``sigma_nm`` where it has
none). A :class:`PhotonHistogram` counts the localizations' photons (log bins) for the
page's photon histogram.
"""

from __future__ import annotations

import base64
import enum
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.render import (
    RENDER_MODES,
    DepthHistogram,
    RenderMode,
    RenderSettings,
    colorbar_stops,
    lateral_sigma_nm,
)
from clients.subscriber import LocalizationSubscriber
from engines.types import Localizations
from service.curve import CurveClientKeys

log = logging.getLogger(__name__)


class PhotonHistogram:
    """Photons per localization in ``bins`` log-spaced bins from 10^lo to 10^hi (values
    outside count in the end bins); NaN (no photometry) counted as ``unknown``."""

    def __init__(self, log10_range: tuple[float, float] = (1.0, 6.0), bins: int = 50) -> None:
        self.log10_range = log10_range
        self.edges = np.logspace(*log10_range, bins + 1)
        self.counts = np.zeros(bins, np.int64)
        self.unknown = 0

    def add(self, photons: np.ndarray) -> None:
        photons = np.asarray(photons, np.float64).ravel()
        known = np.isfinite(photons) & (photons > 0)
        clipped = np.clip(photons[known], self.edges[0], self.edges[-1])
        self.counts += np.histogram(clipped, self.edges)[0]
        self.unknown += int((~known).sum())

    def reset(self) -> None:
        self.counts[:] = 0
        self.unknown = 0

    def median(self) -> float | None:
        """The median photons, to within a bin (geometric bin centre); None if empty."""
        total = int(self.counts.sum())
        if not total:
            return None
        i = int(np.searchsorted(np.cumsum(self.counts), total / 2))
        return float(np.sqrt(self.edges[i] * self.edges[i + 1]))

    def summary(self) -> dict[str, Any]:
        return {
            "log10_range": list(self.log10_range),
            "counts": self.counts.tolist(),
            "known": int(self.counts.sum()),
            "unknown": self.unknown,
            "median": self.median(),
        }


class LiveState(str, enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class Snapshot:
    """The latest rendered image and what went into it (sent to browsers as JSON)."""

    version: int = 0
    png_b64: str = ""
    width_px: int = 0
    height_px: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class LiveImage:
    """Accumulates the localization stream into a depth-coloured image."""

    def __init__(
        self,
        locs_endpoint: str,
        settings: RenderSettings,
        extent_nm: tuple[float, float],
        *,
        interval_s: float = 0.5,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self.endpoint = locs_endpoint
        self.curve = curve
        self.settings = settings
        self.interval_s = interval_s
        self.hist = DepthHistogram(settings.nm_per_px, *extent_nm)
        self.blurred = DepthHistogram(settings.nm_per_px, *extent_nm)  # precision mode
        self.photons = PhotonHistogram()
        self.state = LiveState.IDLE
        self.snapshot = Snapshot()
        self.frames = 0
        self.missed = 0
        self.last: dict[str, Any] = {}
        self.acquisition: str | None = None  # a new one starts a new image
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = True

    def start(self) -> None:
        with self._lock:
            if self.state is not LiveState.IDLE:
                return
            self.state = LiveState.RUNNING
        self._render()  # a blank image until localizations arrive
        self._thread = threading.Thread(target=self._run, name="dashboard-live", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.state = LiveState.STOPPED

    def reset(self) -> None:
        with self._lock:
            self._clear()
            self._dirty = True
        self._render()

    def _clear(self) -> None:
        self.hist.reset()
        self.blurred.reset()
        self.photons.reset()
        self.frames = 0

    def set_mode(self, mode: RenderMode) -> None:
        """Show the histogram (``hist``), its fixed blur (``gauss``) or the precision blur."""
        if mode not in RENDER_MODES:
            raise ValueError(f"render mode must be one of {', '.join(RENDER_MODES)}, got {mode!r}")
        with self._lock:
            self.settings = self.settings.model_copy(update={"mode": mode})
            self._dirty = True
        self._render()

    def _add(self, batch: list[Localizations]) -> None:
        xyz = np.concatenate([loc.xyz_nm for loc in batch])
        precision = np.concatenate([loc.precision_nm for loc in batch])
        sigma = lateral_sigma_nm(precision, len(xyz), self.settings)
        with self._lock:
            self.hist.add(xyz)
            self.blurred.add(xyz, sigma)
            self.photons.add(np.concatenate([loc.photons for loc in batch]))
            self._dirty = True

    def _run(self) -> None:
        with LocalizationSubscriber(self.endpoint, curve=self.curve) as sub:
            log.info("dashboard subscribed to %s", self.endpoint)
            last_render = 0.0
            while not self._stop.is_set():
                batch = self._drain(sub)
                if batch:
                    self._add(batch)
                self.missed = sub.gaps.missed
                now = time.monotonic()
                if self._dirty and now - last_render >= self.interval_s:
                    self._render()
                    last_render = now

    def _drain(self, sub: LocalizationSubscriber) -> list[Localizations]:
        """Localizations received in the next ~100 ms (at most 2000 messages)."""
        rows: list[Localizations] = []
        deadline = time.monotonic() + 0.1
        msg = sub.recv(0.1)
        while msg is not None:
            if msg.acquisition != self.acquisition:
                if self.acquisition is not None:  # a new acquisition: a new image
                    rows.clear()
                    with self._lock:
                        self._clear()
                    log.info("dashboard: acquisition %r, image reset", msg.acquisition)
                self.acquisition = msg.acquisition
            rows.append(msg.locs)
            with self._lock:
                self.frames += 1
                self._dirty = True  # frame count changed even with zero localizations
            self.last = {
                "frame": msg.frame,
                "model": msg.model,
                "model_version": msg.model_version,
                "threshold": msg.threshold,
                "acquisition": msg.acquisition,
            }
            if len(rows) >= 2000 or time.monotonic() >= deadline:
                break
            msg = sub.recv(0)
        return rows

    def _render(self) -> None:
        from PIL import Image

        with self._lock:
            image = self.blurred if self.settings.mode == "precision" else self.hist
            rgb = image.rgb(self.settings)
            info = {
                "frames": self.frames,
                "localizations": self.hist.total,
                "outside": self.hist.outside,
                "missed": self.missed,
                "mode": self.settings.mode,
                "photons": self.photons.summary(),
                **self.last,
            }
            self._dirty = False
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
        self.snapshot = Snapshot(
            self.snapshot.version + 1,
            base64.b64encode(buf.getvalue()).decode("ascii"),
            rgb.shape[1],
            rgb.shape[0],
            info,
        )

    def describe(self) -> dict[str, Any]:
        """Static facts for the page: scale, depth range and colour bar."""
        lo, hi = self.settings.z_range_nm
        return {
            "nm_per_px": self.settings.nm_per_px,
            "z_min_nm": lo,
            "z_max_nm": hi,
            "colorbar": colorbar_stops(self.settings.cmap),
            "endpoint": self.endpoint,
            "state": self.state.value,
            "mode": self.settings.mode,
            "modes": list(RENDER_MODES),
            "sigma_nm": self.settings.sigma_nm,
        }
