"""The engine interface: raw frame batches in, per-frame localizations out.

Written once here for every backend: validation (planes, dtype, finite values, empty
frames), threshold checks, splitting a batch into chunks a backend can take (a TensorRT
profile's largest batch, a bound on pixels per call that keeps CPU memory flat), padding
the batch to a power of two where a backend keeps per-shape state (CUDA graphs), dropping
the padding's localizations, translating backend failures into :class:`EngineError`, and
splitting the flat result per frame. A backend implements :meth:`Engine._run`, which
returns the localizations of one validated float32 chunk, thresholded and gathered on its
device, so only localizations cross back to the host (a
:class:`~engines.inference.results.FlatLocs`).

Raw camera frames (:meth:`Engine.infer_raw`, the live service's path) go to the device
as the cameras sent them (uint16 or float32); the registration, baseline and gain
(:class:`~engines.inference.registration.PlaneRegistration`) are the first step of the
engine's own graph (:meth:`Engine._run_raw`). The default :meth:`Engine._run_raw`
registers with torch on the host and calls :meth:`Engine._run`, for a backend without an
input stage of its own.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from engines.errors import EngineError, FormatError, VoxlocError
from engines.inference.checks import (
    check_finite,
    check_threshold,
    pad_to_bucket,
    register_on_host,
)
from engines.inference.registration import PlaneRegistration
from engines.inference.results import FlatLocs, PendingResult, split_per_frame
from engines.modeldir import ModelInfo, read_info, resolve_model
from engines.photometry import Photometry, PhotometryFit
from engines.precision import nearest_neighbour_nm
from engines.types import ACCEPTED_DTYPE_NAMES, ACCEPTED_DTYPES, Localizations

log = logging.getLogger(__name__)

# pixels (batch x H x W) per backend call: bounds peak activation memory (~2 kB per pixel
# in float32) without costing throughput, since the work per pixel is the same
DEFAULT_MAX_PIXELS = 1 << 21


class BackendUnavailableError(EngineError, ImportError):
    """A backend's package or hardware is missing; the message names what to install."""


class Engine(ABC):
    """Runs one model. Thread-safe: calls are serialised by a lock.

    Class attributes a backend may set: ``options`` (the keyword arguments its constructor
    takes besides ``model``, ``threshold`` and ``device``; :func:`create_engine` passes
    only these), ``max_batch`` (largest batch per call, None for no limit), ``max_pixels``
    (largest batch x H x W per call) and ``pad_batch`` (pad each chunk to a power of two
    with blank frames, for backends with per-shape state).

    ``refine`` (instance attribute, default off): refine each localization by the
    photometry fit's Gauss-Newton steps (:meth:`engines.photometry.PhotometryFit.refine`),
    for frames whose planes are registered; it changes the positions. Without a precision
    calibration of refined positions it logs a warning once (``warn_uncalibrated_refine``).
    :meth:`submit_raw` takes it per call too (the live service's ``refine`` setting).
    """

    options: ClassVar[frozenset[str]] = frozenset()

    backend: str = "abstract"
    device: str = "cpu"
    precision: str = "fp32"
    max_batch: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    pad_batch: bool = False

    def __init__(self, model: str | Path, *, threshold: float = 0.5) -> None:
        self.model_dir = resolve_model(model)
        self.info: ModelInfo = read_info(self.model_dir)
        self.threshold = threshold
        self._lock = threading.Lock()
        self.calibration = self.info.precision
        self.refine = False
        self._refine_call: bool | None = None  # a call's own refine (submit_raw), under the lock
        self.warn_uncalibrated_refine = True  # once, when refining without its calibration
        self._photometry: PhotometryFit | None = None
        if self.calibration is None:
            log.info(
                "model %r has no precision calibration: localizations carry NaN precision "
                "(voxloc evaluate --calibrate-precision records one)",
                self.info.name,
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.info.name!r} on {self.device}>"

    @property
    def planes(self) -> int:
        return self.info.planes

    @property
    def label(self) -> str:
        """``backend/device``, plus the precision where it is not float32: ``torch/cpu/bf16``."""
        return "/".join(
            [self.backend, self.device] + ([self.precision] if self.precision != "fp32" else [])
        )

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = check_threshold(value)

    def validate(self, frames: np.ndarray) -> np.ndarray:
        """Check a batch and return it as C-contiguous float32 ``(B, P, H, W)``."""
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise FormatError(
                f"expected frames of shape (batch, {self.planes}, H, W), got shape {arr.shape}"
            )
        if arr.dtype not in ACCEPTED_DTYPES:
            raise FormatError(f"expected {ACCEPTED_DTYPE_NAMES} frames, got {arr.dtype}")
        b, p, h, w = arr.shape
        if p != self.planes:
            raise FormatError(
                f"model {self.info.name!r} expects {self.planes} planes, got {p} "
                f"(frames of shape {arr.shape})"
            )
        if b == 0 or h == 0 or w == 0:
            raise FormatError(f"empty batch: frames of shape {arr.shape}")
        out = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.dtype.kind == "f":
            check_finite(out)
        return out

    def infer(
        self, frames: np.ndarray, threshold: float | None = None, first_frame: int = 0
    ) -> list[Localizations]:
        """Localize a batch; returns one :class:`Localizations` per frame (empty ones too).

        Args:
            frames: ``(B, P, H, W)`` (or one ``(P, H, W)`` frame) of raw camera values.
            threshold: confidence threshold (default: the engine's current one).
            first_frame: frame index of ``frames[0]``; later frames count up from it.
        """
        batch = self.validate(frames)
        tau = self.threshold if threshold is None else check_threshold(threshold)
        parts: list[FlatLocs] = []
        with self._lock:
            for start, chunk in self._chunks(batch):
                parts.append(self._run_chunk(chunk, tau).shifted(start))
        return split_per_frame(FlatLocs.concat(parts), batch.shape[0], first_frame)

    def infer_raw(
        self,
        frames: Sequence[np.ndarray] | np.ndarray,
        registration: PlaneRegistration,
        threshold: float | None = None,
        first_frame: int = 0,
    ) -> list[Localizations]:
        """Localize raw camera frame sets, registered on the engine's device.

        Args:
            frames: ``B`` frame sets ``(P, H, W)`` of one dtype, uint16 or float32 ADU as
                the cameras sent them (a ``(B, P, H, W)`` array or a list of sets: the
                service passes the buffers its ingest wrote, uncopied).
            registration: the planes' registration, baseline and gain.
            threshold, first_frame: as for :meth:`infer`.

        Float32 pixels are not scanned for NaN/inf here (the service's ingest refuses
        such frames on arrival).
        """
        sets = self.validate_raw(frames, registration)
        tau = self.threshold if threshold is None else check_threshold(threshold)
        return self._infer_raw(sets, registration, tau, first_frame)

    def _infer_raw(
        self,
        sets: list[np.ndarray],
        registration: PlaneRegistration,
        tau: float,
        first_frame: int,
        refine: bool | None = None,
    ) -> list[Localizations]:
        """:meth:`infer_raw` of validated sets, in chunks the backend takes (``refine``:
        as for :meth:`submit_raw`)."""
        _, h, w = sets[0].shape
        size = len(sets) if self.max_batch is None else min(len(sets), self.max_batch)
        if self.max_pixels is not None:
            size = max(1, min(size, self.max_pixels // (h * w)))
        parts: list[FlatLocs] = []
        with self._lock, self._refining(refine):
            for start in range(0, len(sets), size):
                chunk = self._run_raw_chunk(sets[start : start + size], registration, tau)
                parts.append(chunk.shifted(start))
        return split_per_frame(FlatLocs.concat(parts), len(sets), first_frame)

    def validate_raw(
        self, frames: Sequence[np.ndarray] | np.ndarray, registration: PlaneRegistration
    ) -> list[np.ndarray]:
        """Check raw frame sets (shape, planes, one dtype) without touching their pixels."""
        sets = list(frames[None] if isinstance(frames, np.ndarray) and frames.ndim == 3 else frames)
        if not sets:
            raise FormatError("empty batch: no frame sets")
        first = sets[0]
        if first.ndim != 3 or first.shape[0] != self.planes or 0 in first.shape:
            raise FormatError(
                f"expected frame sets of shape ({self.planes}, H, W), got {first.shape}"
            )
        if first.dtype.name not in RAW_DTYPES:
            raise FormatError(f"expected raw frames of {RAW_DTYPES}, got {first.dtype}")
        for s in sets[1:]:
            if s.shape != first.shape or s.dtype != first.dtype:
                raise FormatError(
                    f"expected every frame set as {first.shape} {first.dtype}, "
                    f"got {s.shape} {s.dtype}"
                )
        if registration.planes != self.planes:
            raise FormatError(
                f"registration of {registration.planes} planes for a {self.planes}-plane model"
            )
        return sets

    def submit_raw(
        self,
        frames: Sequence[np.ndarray] | np.ndarray,
        registration: PlaneRegistration,
        threshold: float | None = None,
        first_frame: int = 0,
        refine: bool | None = None,
    ) -> PendingResult:
        """Start :meth:`infer_raw`; ``result()`` of the answer waits for it. ``refine``:
        refine this batch's positions or not (None: :attr:`refine`), also where the
        batch is measured only at collection.

        Where a backend has an asynchronous hand-off (torch on CUDA: the host-to-device
        copy on its own stream), the copy of this batch overlaps the compute of one
        submitted before and not collected yet. Elsewhere, or for a batch that needs
        several chunks, it runs now. Collect in submission order.
        """
        sets = self.validate_raw(frames, registration)
        tau = self.threshold if threshold is None else check_threshold(threshold)
        n = len(sets)
        _, h, w = sets[0].shape
        fits = (self.max_batch is None or n <= self.max_batch) and (
            self.max_pixels is None or n * h * w <= self.max_pixels
        )
        ref = self.refine if refine is None else bool(refine)
        if not (self.async_raw and fits):
            out = self._infer_raw(sets, registration, tau, first_frame, ref)
            return PendingResult(lambda: out)
        padded = self._pad_sets(sets)
        with self._lock:
            ticket = self._translate(lambda: self._start_raw(padded, registration), padded)

        def collect() -> list[Localizations]:
            with self._lock, self._refining(ref):
                flat = self._translate(lambda: self._finish_raw(ticket, registration, tau), padded)
            return split_per_frame(self._unpad(flat, n), n, first_frame)

        return PendingResult(collect)

    async_raw: bool = False  # a backend with _start_raw / _finish_raw sets it (per instance)

    def _start_raw(self, sets: list[np.ndarray], registration: PlaneRegistration) -> Any:
        raise NotImplementedError

    def _finish_raw(
        self, ticket: Any, registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        raise NotImplementedError

    def _pad_sets(self, sets: list[np.ndarray]) -> list[np.ndarray]:
        n = len(sets)
        if not self.pad_batch:
            return sets
        bucket = 1 << (n - 1).bit_length()
        if self.max_batch is not None:
            bucket = min(bucket, max(self.max_batch, n))
        return sets + [np.zeros_like(sets[0])] * (bucket - n)

    def _translate(self, fn: Callable[[], Any], sets: list[np.ndarray]) -> Any:
        try:
            return fn()
        except VoxlocError:
            raise
        except Exception as exc:  # foreign runtime errors (CUDA, OOM, ...)
            raise EngineError(
                f"{self.backend} inference on {self.device} failed for {len(sets)} raw frame "
                f"sets of shape {sets[0].shape} {sets[0].dtype}: {exc}"
            ) from exc

    @staticmethod
    def _unpad(flat: FlatLocs, n: int) -> FlatLocs:
        keep = flat.frame < n
        return flat if keep.all() else flat.take(keep)

    def _run_raw_chunk(
        self, sets: list[np.ndarray], registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        n = len(sets)
        padded = self._pad_sets(sets)
        flat = self._translate(lambda: self._run_raw(padded, registration, threshold), padded)
        return self._unpad(flat, n)

    def _run_raw(
        self, sets: list[np.ndarray], registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        """Backend work for raw sets; this default registers on the host (torch, CPU)."""
        return self._run(register_on_host(sets, registration), threshold)

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """A host array for raw frames bound for this engine (pinned where the engine is
        on CUDA, so the copy to the device is asynchronous DMA)."""
        return np.empty(shape, dtype)

    def _chunks(self, batch: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        b, _, h, w = batch.shape
        size = b if self.max_batch is None else min(b, self.max_batch)
        if self.max_pixels is not None:
            size = max(1, min(size, self.max_pixels // (h * w)))
        for start in range(0, b, size):
            yield start, batch[start : start + size]

    def _run_chunk(self, chunk: np.ndarray, threshold: float) -> FlatLocs:
        n = chunk.shape[0]
        if self.pad_batch:
            chunk = pad_to_bucket(chunk, self.info.input_offset, self.max_batch)
        try:
            flat = self._run(chunk, threshold)
        except VoxlocError:
            raise
        except Exception as exc:  # foreign runtime errors (ORT, TensorRT, CUDA, OOM)
            raise EngineError(
                f"{self.backend} inference on {self.device} failed for a batch "
                f"of shape {chunk.shape}: {exc}"
            ) from exc
        return self._unpad(flat, n) if chunk.shape[0] != n else flat

    @abstractmethod
    def _run(self, frames: np.ndarray, threshold: float) -> FlatLocs:
        """Backend work: ``(B, P, H, W)`` float32 -> :class:`FlatLocs` (with
        :meth:`_measure`'s photometry). Rows must be ordered by frame (index within
        ``frames``).
        """

    # --- photometry and precision (engines.photometry, engines.precision) ---------------
    @contextmanager
    def _refining(self, refine: bool | None) -> Iterator[None]:
        """A call's own refine setting (None: :attr:`refine`); hold the lock."""
        self._refine_call = refine
        try:
            yield
        finally:
            self._refine_call = None

    def _refines(self) -> bool:
        """Whether the running call refines its positions."""
        return self.refine if self._refine_call is None else self._refine_call

    @property
    def photometry(self) -> PhotometryFit:
        """The photometry of this model's settings (built on first use)."""
        if self._photometry is None:
            cal = self.calibration
            window = {} if cal is None else {"window_px": cal.window_px}
            self._photometry = PhotometryFit(self.info.settings, **window)
        return self._photometry

    def _calibrated(self, ph: Photometry, frame: torch.Tensor, xyz_nm: torch.Tensor) -> Photometry:
        """The bound turned into the model's calibrated precision (NaN without one)."""
        if self.calibration is None:
            return replace(ph, crlb_nm=torch.full_like(ph.crlb_nm, math.nan))
        near = nearest_neighbour_nm(frame, xyz_nm[:, :2])
        refine = self._refines()
        if refine and self.calibration.refined is None and self.warn_uncalibrated_refine:
            self.warn_uncalibrated_refine = False
            log.warning(
                "model %r has no precision calibration of refined positions: lpx/lpy/lpz "
                "are the network's (too large for refined positions); run voxloc evaluate "
                "--calibrate-precision --refine on it (docs/photometry.md)",
                self.info.name,
            )
        cal = self.calibration.for_positions(refine)
        sigma = cal.apply(ph.crlb_nm, near, ph.step_nm, ph.chi2)
        return replace(ph, crlb_nm=sigma)

    def _fitted(
        self,
        measure: Callable[..., Photometry],
        xyz_nm: torch.Tensor,
        shape: torch.Size,
        frame: torch.Tensor,
    ) -> tuple[torch.Tensor, Photometry]:
        """The positions (refined where :attr:`refine` is set, with each frame's plane
        shifts) and their photometry, from ``measure(positions, with_bound, **shift)`` on
        frames of ``shape`` ``(B, P, H, W)``; ``frame`` ``(N,)`` indexes them."""
        if not self._refines():
            return xyz_nm, measure(xyz_nm, self.calibration is not None)
        px = self.info.settings.geometry.px_nm
        extent = (shape[-1] * px, shape[-2] * px)
        return self.photometry.refine(
            lambda p, **kw: measure(p, True, **kw),
            xyz_nm,
            extent_nm=extent,
            frame_idx=frame,
            frames=shape[0],
        )

    def _measure(
        self, frames: torch.Tensor, frame: torch.Tensor, xyz_nm: torch.Tensor, conf: torch.Tensor
    ) -> FlatLocs:
        """Rows with photons, background and precision, fitted on ``frames`` ``(B, P, H,
        W)`` (registered, model units) on their device; only the rows cross to the host."""
        fit = self.photometry
        xyz_nm, ph = self._fitted(
            lambda p, b, **kw: fit.measure(frames, frame, p, crlb=b, **kw),
            xyz_nm,
            frames.shape,
            frame,
        )
        return FlatLocs.from_device(frame, xyz_nm, conf, self._calibrated(ph, frame, xyz_nm))

    def _measure_raw(
        self,
        raw: torch.Tensor,
        registration: PlaneRegistration,
        frame: torch.Tensor,
        xyz_nm: torch.Tensor,
        conf: torch.Tensor,
    ) -> FlatLocs:
        """:meth:`_measure` on raw camera frames: only the windows are registered."""
        fit = self.photometry
        xyz_nm, ph = self._fitted(
            lambda p, b, **kw: fit.measure_raw(raw, registration, frame, p, crlb=b, **kw),
            xyz_nm,
            raw.shape,
            frame,
        )
        return FlatLocs.from_device(frame, xyz_nm, conf, self._calibrated(ph, frame, xyz_nm))

    def warmup(self, height: int = 64, width: int = 64, batch: int = 1) -> None:
        """Run once on a blank batch (allocations, kernel selection, graph capture)."""
        bg = self.info.input_offset
        self.infer(np.full((batch, self.planes, height, width), bg, np.float32), 0.99)

    def close(self) -> None:
        """Release device resources (backends with any extend this)."""
        log.debug("closing %r", self)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RAW_DTYPES = ("uint16", "float32")
