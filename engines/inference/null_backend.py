"""Null backend: a measurement tool, like Triton's identity model for perf_analyzer.

It takes the same calls as every engine and does everything the real engines do on the
host (validation, the threshold check, chunking, per-frame splitting, and for raw camera
frames the hand-off of the batch to the engine's input stage) but no device compute: no
registration, no network, no decode. It returns no localizations. Serving it
(``[inference] backend = "null"``) measures the live pipeline's own ceiling: whatever
rate the service reaches with it is what ingest, assembly, batching and publishing
allow, before any model costs anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.inference.base import Engine
from engines.inference.registration import PlaneRegistration
from engines.inference.results import FlatLocs


class NullEngine(Engine):
    backend = "null"

    def __init__(self, model: str | Path, *, threshold: float = 0.5, device: str = "cpu") -> None:
        super().__init__(model, threshold=threshold)
        self.device = device

    def _run(self, frames: np.ndarray, threshold: float) -> FlatLocs:
        return _EMPTY

    def _run_raw(
        self, sets: list[np.ndarray], registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        return _EMPTY  # the sets stay where the ingest wrote them: no copy, no compute


_EMPTY = FlatLocs.empty()
