"""TensorRT backend (optional extra: ``pip install voxloc[tensorrt]``), TensorRT 10 and 11.

Builds a **strongly typed** engine (TensorRT 11 removed weak typing: no
``BuilderFlag.FP16``, no ``OBEY_PRECISION_CONSTRAINTS``, no per-layer precision; TensorRT 10
has strongly typed networks too): the ONNX's types are the engine's. FP32 builds from the
decoding ONNX (:mod:`engines.export`); FP16 from the same graph with its convolutions in
float16 (:func:`engines.export.fp16_network`), normalisation, sigmoid and decoding left in
float32. One optimisation profile over batch and H x W
(:class:`~engines.inference.engine_cache.Profile`); the serialised engine is cached keyed
by TensorRT version, GPU, compute capability, profile, precision and the hash of the ONNX
it was built from; a stale or foreign cache entry is rebuilt.

Raw camera frames (the live service) are registered on the GPU before the engine: the
uint16 (or float32) sets cross the bus as they are, from the ingest's pinned frame-set
buffers, and the input stage (:class:`~engines.inference.registration.InputStage`: the
affine resampling, baseline and gain, with the registration in device buffers, so a new
one needs no rebuild) runs as torch kernels on the engine's stream, writing the float32
frames the engine reads in place. TensorRT has no uint16 input type, so the widening
could not be inside the engine anyway.

Device buffers are torch CUDA tensors (torch is a dependency anyway; no pycuda context
juggling): the input is copied from pinned memory, the threshold lives in a 1-element
device tensor, and the data-dependent ``locs (N, 5)`` output (``NonZero`` in the graph)
is served by an ``IOutputAllocator`` that grows one buffer and keeps it, so only the N
localization rows are copied back. All TensorRT and CUDA work runs on one worker thread
that owns the CUDA context; :meth:`Engine.infer` may be called from any thread.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.errors import EngineError
from engines.export import (
    INPUT_FRAMES,
    INPUT_THRESHOLD,
    OUTPUT_LOCS,
    artifact_dir,
    fp16_network,
    onnx_for_engine,
)
from engines.inference.base import BackendUnavailableError, Engine
from engines.inference.engine_cache import CacheKey, EngineCache, Profile
from engines.inference.registration import (
    InputStage,
    PlaneRegistration,
    pinned_host_buffer,
    raw_tensor,
)
from engines.inference.results import FlatLocs

try:
    import tensorrt as trt
except ImportError as _exc:
    raise BackendUnavailableError(
        "the tensorrt backend needs TensorRT 10 or 11 and an NVIDIA GPU: "
        "pip install voxloc[tensorrt]"
    ) from _exc

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
_TRT_LEVELS = {
    trt.ILogger.INTERNAL_ERROR: logging.CRITICAL,
    trt.ILogger.ERROR: logging.ERROR,
    trt.ILogger.WARNING: logging.WARNING,
    trt.ILogger.INFO: logging.DEBUG,
    trt.ILogger.VERBOSE: logging.DEBUG,
}


class _TrtLogger(trt.ILogger):
    """TensorRT's messages into Python logging (its INFO is chatty: logged at DEBUG)."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)

    def log(self, severity: Any, msg: str) -> None:
        log.log(_TRT_LEVELS.get(severity, logging.INFO), "TensorRT: %s", msg)


_LOGGER = _TrtLogger()


class _OutputAllocator(trt.IOutputAllocator):
    """Serves the data-dependent ``locs`` output from one growing device buffer."""

    def __init__(self, device: torch.device) -> None:
        trt.IOutputAllocator.__init__(self)
        self.device = device
        self.buffer = torch.empty(4096, dtype=torch.uint8, device=device)
        self.shape: tuple[int, ...] | None = None

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        if size > self.buffer.numel():
            self.buffer = torch.empty(
                max(int(size), 2 * self.buffer.numel()), dtype=torch.uint8, device=self.device
            )
        return self.buffer.data_ptr()

    def reallocate_output_async(
        self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
    ) -> int:
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape: Any) -> None:
        self.shape = tuple(int(d) for d in shape)

    def rows(self) -> torch.Tensor:
        """The last output as a ``(N, 5)`` float32 device view."""
        if self.shape is None or len(self.shape) != 2:
            raise EngineError(f"TensorRT reported output shape {self.shape} for {OUTPUT_LOCS!r}")
        n = self.shape[0]
        return self.buffer[: n * 5 * 4].view(torch.float32).view(n, 5)


def onnx_bytes(onnx_path: Path, precision: str) -> bytes:
    """The ONNX a strongly typed build of ``precision`` parses (FP16: convolutions in
    float16, the rest float32)."""
    if precision == "fp16":
        import onnx

        return fp16_network(onnx.load(str(onnx_path))).SerializeToString()
    return Path(onnx_path).read_bytes()


def network_flags() -> int:
    """Creation flags: strongly typed (TensorRT 10's flag; TensorRT 11 networks always are,
    where the flag may be gone)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_serialized(
    graph: bytes, planes: int, profile: Profile, precision: str, workspace_gib: float = 4.0
) -> bytes:
    """Parse ``graph`` (ONNX bytes, :func:`onnx_bytes`) into a strongly typed network and
    build a serialised engine for ``profile``."""
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse the {precision} graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_FRAMES, *profile.shapes(planes))
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"TensorRT failed to build an engine (profile {profile}, {precision}); "
            "see the log above"
        )
    return bytes(serialized)


class TensorRTEngine(Engine):
    backend = "tensorrt"
    options = frozenset({"precision", "profile", "cache_dir", "rebuild"})

    def __init__(
        self,
        model: str | Path,
        *,
        threshold: float = 0.5,
        device: str = "cuda",
        precision: str = "fp32",
        profile: Profile | None = None,
        cache_dir: Path | None = None,
        rebuild: bool = False,
    ) -> None:
        super().__init__(model, threshold=threshold)
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"the tensorrt backend needs an NVIDIA GPU; torch {torch.__version__} sees none"
            )
        self._dev = torch.device(device)
        if self._dev.type != "cuda":
            raise EngineError(f"the tensorrt backend runs on cuda devices, got {device!r}")
        self.device, self.precision = str(self._dev), precision
        self.profile = profile or Profile()
        self.max_batch = self.profile.max_batch
        onnx_path = onnx_for_engine(self.model_dir, self.info)
        graph = onnx_bytes(onnx_path, precision)
        self.key = CacheKey(
            model=self.info.name,
            onnx_sha256=hashlib.sha256(graph).hexdigest(),  # of the graph built from
            trt_version=trt.__version__,
            gpu_name=torch.cuda.get_device_name(self._dev),
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(self._dev))),
            precision=precision,
            profile=self.profile,
        )
        self.cache = EngineCache(cache_dir or artifact_dir(self.model_dir, self.info, "engines"))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxloc-tensorrt")
        self._worker.submit(self._setup, graph, rebuild).result()
        log.info("tensorrt engine: %s (%s, profile %s)", self.engine_path, precision, self.profile)

    def _setup(self, graph: bytes, rebuild: bool) -> None:
        """On the worker thread: load or build the engine, make context, stream, buffers."""
        torch.cuda.set_device(self._dev)
        self._runtime = trt.Runtime(_LOGGER)
        self._engine, self.engine_path = self.cache.get_or_build(
            self.key,
            lambda: build_serialized(graph, self.planes, self.profile, self.precision),
            self._runtime.deserialize_cuda_engine,
            force=rebuild,
        )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(
                f"TensorRT cannot create an execution context for "
                f"{self.engine_path} (out of GPU memory?)"
            )
        self._stream = torch.cuda.Stream(self._dev)
        self._threshold_dev = torch.zeros(1, dtype=torch.float32, device=self._dev)
        self._stages: dict[tuple[int, int], InputStage] = {}  # raw frames' input stage per size
        self._allocator = _OutputAllocator(self._dev)
        if not self._context.set_output_allocator(OUTPUT_LOCS, self._allocator):
            raise EngineError(f"TensorRT refused an output allocator for {OUTPUT_LOCS!r}")
        self._context.set_tensor_address(INPUT_THRESHOLD, self._threshold_dev.data_ptr())

    def _run(self, frames: np.ndarray, threshold: float) -> FlatLocs:
        self.profile.check_frame(frames.shape[2], frames.shape[3])
        n = frames.shape[0]
        if n < self.profile.min_batch:  # blank frames up to the profile's smallest batch
            blank = np.full(
                (self.profile.min_batch - n, *frames.shape[1:]), self.info.input_offset, np.float32
            )
            frames = np.concatenate([frames, blank])
        flat = self._worker.submit(self._execute, frames, threshold).result()
        return flat.take(flat.frame < n)

    def _run_raw(
        self, sets: list[np.ndarray], registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        _, h, w = sets[0].shape
        self.profile.check_frame(h, w)
        n = len(sets)
        flat = self._worker.submit(self._execute_raw, sets, registration, threshold).result()
        return flat.take(flat.frame < n)

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        return pinned_host_buffer(shape, dtype)

    def _execute(self, frames: np.ndarray, threshold: float) -> FlatLocs:
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(frames).pin_memory().to(self._dev, non_blocking=True)
            return self._enqueue(x, threshold)

    @torch.inference_mode()
    def _execute_raw(
        self, sets: list[np.ndarray], registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        """Raw sets to the device (camera dtype), registered there, then the engine."""
        p, h, w = sets[0].shape
        b = max(len(sets), self.profile.min_batch)
        with torch.cuda.stream(self._stream):
            first = raw_tensor(sets[0])
            raw = torch.empty((b, p, h, w), dtype=first.dtype, device=self._dev)
            for i, s in enumerate(sets):  # from pinned slots: DMA, no host staging copy
                raw[i].copy_(raw_tensor(s), non_blocking=True)
            stage = self._stages.get((h, w))
            if stage is None:
                stage = self._stages[(h, w)] = InputStage(p, h, w, self._dev)
            stage.load(registration)
            x = stage(raw).contiguous()
            if b > len(sets):  # blank frames up to the profile's smallest batch
                x[len(sets) :] = self.info.input_offset
            return self._enqueue(x, threshold)

    def _enqueue(self, x: torch.Tensor, threshold: float) -> FlatLocs:
        """Run the engine on ``x`` (float32 frames on the device, this stream)."""
        ctx = self._context
        self._threshold_dev.fill_(threshold)
        if not ctx.set_input_shape(INPUT_FRAMES, tuple(x.shape)):
            raise EngineError(
                f"TensorRT rejected input shape {tuple(x.shape)} (profile {self.profile})"
            )
        ctx.set_tensor_address(INPUT_FRAMES, x.data_ptr())
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise EngineError(f"TensorRT execution failed for input shape {tuple(x.shape)}")
        rows = self._allocator.rows()
        flat = self._measure(x, rows[:, 0].long(), rows[:, 1:4], rows[:, 4])
        self._stream.synchronize()
        return flat

    def close(self) -> None:
        def release() -> None:
            self._context = self._engine = None
            torch.cuda.empty_cache()

        self._worker.submit(release).result()
        self._worker.shutdown()
        super().close()


def build_engine(
    model: str | Path,
    *,
    precision: str = "fp32",
    profile: Profile | None = None,
    device: str = "cuda",
    cache_dir: Path | None = None,
    rebuild: bool = False,
) -> Path:
    """Build (or find) the cached engine of ``model``; returns its path."""
    engine = TensorRTEngine(
        model,
        precision=precision,
        profile=profile,
        device=device,
        cache_dir=cache_dir,
        rebuild=rebuild,
    )
    try:
        return engine.engine_path
    finally:
        engine.close()
