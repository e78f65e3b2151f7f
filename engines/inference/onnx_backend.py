"""ONNX Runtime backend: the decoding graph of :mod:`engines.export` in one session.

Raw camera frames (:meth:`~engines.inference.base.Engine.infer_raw`) run a second session
of the same graph with the registration in front (:func:`engines.export.with_input_stage`,
one per raw dtype, built on first use): the frames go in as the cameras sent them, and
the sampling grid, baseline and gain are runtime inputs like the threshold.

The CPU execution provider is always there; ``device="cuda"`` (or ``"cuda:N"``) uses the
CUDA execution provider of ``onnxruntime-gpu`` (``pip install voxloc[gpu]``), with the
TensorRT execution provider in front when ``trt_ep=True``. The threshold is a graph input,
so changing it never rebuilds anything, and only the ``(N, 5)`` localization rows come
back from the device. The ONNX is exported into the model directory (or the cache, for a
read-only one) on first use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from engines.errors import EngineError
from engines.export import (
    INPUT_BASELINE,
    INPUT_FRAMES,
    INPUT_GAIN,
    INPUT_GRID,
    INPUT_RAW,
    INPUT_THRESHOLD,
    OUTPUT_LOCS,
    cache_root,
    onnx_for_engine,
    read_onnx_metadata,
    with_input_stage,
)
from engines.inference.base import BackendUnavailableError, Engine
from engines.inference.registration import PlaneRegistration, raw_tensor
from engines.inference.results import FlatLocs

log = logging.getLogger(__name__)


class OnnxEngine(Engine):
    backend = "onnxruntime"
    options = frozenset({"threads", "trt_ep", "onnx_path"})

    def __init__(
        self,
        model: str | Path,
        *,
        threshold: float = 0.5,
        device: str = "cpu",
        threads: int | None = None,
        trt_ep: bool = False,
        onnx_path: Path | None = None,
    ) -> None:
        super().__init__(model, threshold=threshold)
        self.device = device
        path = Path(onnx_path) if onnx_path else onnx_for_engine(self.model_dir, self.info)
        meta = read_onnx_metadata(path)
        if meta.get("planes") != str(self.planes):
            raise EngineError(
                f"{path} takes {meta.get('planes')} planes but model "
                f"{self.info.name!r} has {self.planes}"
            )
        self.onnx_path = path
        self.session = make_session(path, device, threads=threads, trt_ep=trt_ep)
        self._session_args = (device, threads, trt_ep)
        self._raw_sessions: dict[str, ort.InferenceSession] = {}
        self._threshold_buf = np.zeros(1, np.float32)
        log.info("onnxruntime engine: %s with %s", path, self.session.get_providers())

    def _run(self, frames: np.ndarray, threshold: float) -> FlatLocs:
        self._threshold_buf[0] = threshold
        (locs,) = self.session.run(
            [OUTPUT_LOCS], {INPUT_FRAMES: frames, INPUT_THRESHOLD: self._threshold_buf}
        )
        return self._measure(torch.from_numpy(frames), *_columns(locs))

    def _run_raw(
        self, sets: list[np.ndarray], registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        _, h, w = sets[0].shape
        session = self._raw_session(sets[0].dtype.name)
        self._threshold_buf[0] = threshold
        baseline, gain = registration.scale_shift()
        feeds = {
            INPUT_RAW: np.stack(sets),
            INPUT_GRID: registration.grid(h, w),
            INPUT_BASELINE: baseline,
            INPUT_GAIN: gain,
            INPUT_THRESHOLD: self._threshold_buf,
        }
        (locs,) = session.run([OUTPUT_LOCS], feeds)
        raw = raw_tensor(feeds[INPUT_RAW])  # only the windows are converted
        return self._measure_raw(raw, registration, *_columns(locs))

    def _raw_session(self, dtype: str) -> ort.InferenceSession:
        if dtype not in self._raw_sessions:
            staged = with_input_stage(onnx.load(str(self.onnx_path)), dtype)
            device, threads, trt_ep = self._session_args
            self._raw_sessions[dtype] = make_session(
                staged.SerializeToString(), device, threads=threads, trt_ep=trt_ep
            )
            log.info("onnxruntime engine: input stage for %s frames", dtype)
        return self._raw_sessions[dtype]


def _columns(locs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame, xyz and confidence of the graph's ``(N, 5)`` rows, as host tensors."""
    t = torch.from_numpy(np.ascontiguousarray(locs))
    return t[:, 0].long(), t[:, 1:4], t[:, 4]


def providers_for(device: str, *, trt_ep: bool = False) -> list:
    """Execution providers (with options) for ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise EngineError(f"onnxruntime runs on 'cpu', 'cuda' or 'cuda:N', got device {device!r}")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailableError(
            f"device {device!r} asked for, but onnxruntime {ort.__version__} has no CUDA "
            f"execution provider (has {available}); pip install voxloc[gpu]"
        )
    dev_id = int(index or 0)
    providers: list = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    if trt_ep:
        if "TensorrtExecutionProvider" not in available:
            raise BackendUnavailableError(
                "trt_ep=True, but onnxruntime has no TensorRT "
                "execution provider; pip install voxloc[tensorrt,gpu]"
            )
        cache = cache_root() / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        providers.insert(
            0,
            (
                "TensorrtExecutionProvider",
                {
                    "device_id": dev_id,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                },
            ),
        )
    return providers


def make_session(
    path: Path | bytes, device: str, *, threads: int | None = None, trt_ep: bool = False
) -> ort.InferenceSession:
    """An inference session with all graph optimisations; EngineError if the file is bad."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads if threads is not None else _default_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    providers = providers_for(device, trt_ep=trt_ep)
    try:
        source = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(source, opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        what = "an in-memory graph" if isinstance(path, bytes) else path
        raise EngineError(f"onnxruntime cannot load {what}: {exc}") from exc


def _default_threads() -> int:
    """One intra-op thread per core this process may use (ORT's own default ignores affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
