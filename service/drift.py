"""The drift observer's service parts: the live plane-offset estimator
(:class:`engines.calibration.drift.DriftEstimator`, the math) wired to a pipeline.

Frame sets reach the publisher as raw camera planes with the registration the engine
applied on its device. The observer resamples, on the host, only the small patches it
fits around isolated localizations (:meth:`service.registration.Registration.patches`),
with that same registration, never whole frames. With feedback on, a confident estimate
shifts the registration through :meth:`service.pipeline.Pipeline.update_registration`,
which names the first frame set registered with the shift.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engines.calibration.drift import DriftEstimator, DriftSettings, registration_changes
from service.registration import Registration
from service.types import FrameSet
from service.wire import LocsMessage

if TYPE_CHECKING:
    from service.pipeline import Pipeline


class _RegisteredPatches:
    """Raw planes that register the patches asked for (a ``PatchSource``)."""

    def __init__(self, planes: np.ndarray, registration: Registration) -> None:
        self._planes, self._reg = planes, registration

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._planes.shape)

    def patches(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._reg.patches(self._planes, rows, cols)


class DriftObserver:
    """A localization observer (``service.types.LocalizationObserver``) measuring drift."""

    name = "drift"

    def __init__(self, estimator: DriftEstimator) -> None:
        self.estimator = estimator

    def observe(self, msg: LocsMessage, frame_set: FrameSet) -> None:
        reg = frame_set.registration
        if reg is None:
            self.estimator.observe(msg, frame_set.planes.astype(np.float32))
        else:
            view = _RegisteredPatches(frame_set.planes, reg)
            self.estimator.observe(msg, view, affines=reg.affines())

    def stats(self) -> dict[str, Any]:
        return self.estimator.stats()

    def close(self) -> None:
        self.estimator.close()

    @classmethod
    def for_pipeline(cls, pipeline: Pipeline) -> DriftObserver:
        """The observer of a started pipeline (model loaded): pixel size from its model,
        gauges in its registry, feedback into its registration."""
        settings: DriftSettings = pipeline.settings.drift
        active = pipeline.models.active
        assert active is not None, "load a model before making the drift observer"
        geometry = active.engine.info.settings.geometry
        planes_of = {c.name: c.plane for c in pipeline.settings.cameras}

        def correct(offsets_nm: np.ndarray) -> int:
            changes = registration_changes(
                pipeline.registration, planes_of, offsets_nm, geometry.px_nm
            )
            return pipeline.update_registration(changes)

        return cls(
            DriftEstimator(
                settings,
                px_nm=geometry.px_nm,
                planes=pipeline.settings.stream.planes,
                registry=pipeline.stats.registry,
                correct=correct,
            )
        )
