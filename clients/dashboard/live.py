"""The dashboard's server side: subscribe, bin, render.

:class:`LiveImage` runs one thread that drains the localization stream, adds the
localizations to a :class:`~clients.render.DepthHistogram` in batches, and at most every
``interval_s`` (only when something arrived) renders a depth-coloured PNG. Browsers get
that PNG, never the localizations, so hundreds of frames per second cost them nothing.
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

from clients.render import DepthHistogram, RenderSettings, colorbar_stops
from clients.subscriber import LocalizationSubscriber
from service.curve import CurveClientKeys

log = logging.getLogger(__name__)


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
            self.hist.reset()
            self.frames = 0
            self._dirty = True
        self._render()

    def _run(self) -> None:
        with LocalizationSubscriber(self.endpoint, curve=self.curve) as sub:
            log.info("dashboard subscribed to %s", self.endpoint)
            last_render = 0.0
            while not self._stop.is_set():
                rows = self._drain(sub)
                if rows:
                    with self._lock:
                        self.hist.add(np.concatenate(rows))
                        self._dirty = True
                self.missed = sub.gaps.missed
                now = time.monotonic()
                if self._dirty and now - last_render >= self.interval_s:
                    self._render()
                    last_render = now

    def _drain(self, sub: LocalizationSubscriber) -> list[np.ndarray]:
        """Localizations received in the next ~100 ms (at most 2000 messages)."""
        rows: list[np.ndarray] = []
        deadline = time.monotonic() + 0.1
        msg = sub.recv(0.1)
        while msg is not None:
            if msg.acquisition != self.acquisition:
                if self.acquisition is not None:  # a new acquisition: a new image
                    rows.clear()
                    with self._lock:
                        self.hist.reset()
                        self.frames = 0
                    log.info("dashboard: acquisition %r, image reset", msg.acquisition)
                self.acquisition = msg.acquisition
            rows.append(msg.locs.xyz_nm)
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
            rgb = self.hist.rgb(self.settings)
            info = {
                "frames": self.frames,
                "localizations": self.hist.total,
                "outside": self.hist.outside,
                "missed": self.missed,
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
        }
