"""torch backend: the reference; CPU or CUDA, decode on the device.

Runs the batch-norm-folded network (:mod:`engines.inference.fused`). On CPU the
activations use the channels-last layout (oneDNN's fast path), in float32 or, with
``precision="bf16"``, in bfloat16: on CPUs with AVX512-BF16 or AMX about twice as fast as
float32, coordinates 0.3 nm rms lateral / 0.8 nm axial from float32 (``auto`` picks it
there). On CUDA, optional
FP16 or BF16 (input normalisation and sigmoid stay float32) and optional CUDA-graph capture
(``cuda_graphs=True``): one graph per input shape, batches padded to powers of two by the
base class so few shapes occur, at most ``max_graphs`` kept (least recently used dropped).
The threshold and gather (:func:`engines.decode.decode`) run on the device after the graph.

Raw camera frames (:meth:`~engines.inference.base.Engine.infer_raw`) cross to the device
as the cameras sent them (uint16: half the bytes of float32); registration, baseline and
gain run there first (:class:`~engines.inference.registration.InputStage`, one
``grid_sample`` per batch), inside the CUDA graph when graphs are on. On CUDA the host
buffers are pinned (:meth:`TorchEngine.host_buffer`) and the host-to-device copy runs on
its own stream into one of two device batches per shape, so with
:meth:`~engines.inference.base.Engine.submit_raw` one batch crosses the bus while the
previous one computes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.decode import decode
from engines.errors import EngineError
from engines.inference import hardware
from engines.inference.base import BackendUnavailableError, Engine
from engines.inference.fused import FusedVoxelNet
from engines.inference.registration import (
    InputStage,
    PlaneRegistration,
    pinned_host_buffer,
    raw_tensor,
)
from engines.inference.results import FlatLocs
from engines.modeldir import load_model

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_PRECISIONS = ("fp32", "bf16")


class _CapturedShape:
    """A CUDA graph of ``net`` for one input shape and dtype, with its static buffers."""

    def __init__(
        self,
        net: torch.nn.Module,
        shape: tuple[int, ...],
        device: torch.device,
        *,
        dtype: torch.dtype = torch.float32,
        fill: float = 0.0,
    ) -> None:
        self.input = torch.full(shape, fill, dtype=dtype, device=device)
        self.output: Any  # what net returns: a tensor, or a tuple of them
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up runs off the default stream, as capture needs
            for _ in range(2):
                net(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = net(self.input)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        self.input.copy_(frames, non_blocking=True)
        self.graph.replay()
        out: torch.Tensor = self.output
        return out


class TorchEngine(Engine):
    backend = "torch"
    options = frozenset({"precision", "cuda_graphs", "max_graphs", "threads"})

    def __init__(
        self,
        model: str | Path,
        *,
        threshold: float = 0.5,
        device: str = "cpu",
        precision: str = "fp32",
        cuda_graphs: bool = False,
        max_graphs: int = 16,
        threads: int | None = None,
    ) -> None:
        super().__init__(model, threshold=threshold)
        self._torch_device = _device(device)
        self.device = str(self._torch_device)
        cuda = self._torch_device.type == "cuda"
        if precision not in PRECISIONS:
            raise EngineError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if not cuda and cuda_graphs:
            raise EngineError(f"CUDA graphs need a CUDA device, got device {device!r}")
        if not cuda and precision not in CPU_PRECISIONS:
            raise EngineError(
                f"precision {precision} needs a CUDA device, got device "
                f"{device!r}; on the CPU use one of {CPU_PRECISIONS}"
            )
        if not cuda and precision == "bf16" and hardware.cpu_bf16_instructions() is None:
            log.warning(
                "this CPU has no native bfloat16 (AVX512-BF16/AMX): bf16 runs "
                "emulated, slower than fp32"
            )
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: only when asked for
        if cuda and precision == "fp32":
            # cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default on Ampere
            # and later: on an H200 that moved coordinates by 0.2 nm and flipped detections
            # at the threshold against the CPU reference. fp32 means float32 (process-wide
            # flag); fp16/bf16 are the fast precisions.
            torch.backends.cudnn.allow_tf32 = False
        net, _ = load_model(self.model_dir, device=self.device)
        self.precision = precision
        self.net = FusedVoxelNet(net, dtype=PRECISIONS[precision])
        if not cuda:
            # torch's Module.to overloads omit its documented memory_format= form
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.cuda_graphs = cuda_graphs
        self.pad_batch = cuda_graphs
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[object, ...], _CapturedShape] = OrderedDict()
        self._stages: dict[tuple[int, int], InputStage] = {}
        self._h2d = torch.cuda.Stream(self._torch_device) if cuda else None
        self._staging: dict[tuple[object, ...], list[torch.Tensor]] = {}  # two per shape
        self.async_raw = cuda
        log.info(
            "torch engine: model %r on %s, %s%s",
            self.info.name,
            self.device,
            precision,
            ", CUDA graphs" if cuda_graphs else "",
        )

    @torch.inference_mode()
    def _run(self, frames: np.ndarray, threshold: float) -> FlatLocs:
        g = self.info.settings.geometry
        x = torch.from_numpy(frames)
        if self._torch_device.type == "cuda":
            x = x.pin_memory().to(self._torch_device, non_blocking=True)
        out = self._graph(x)(x) if self.cuda_graphs else self.net(x)
        # decode in float32: (column + zeta) * px in float16 is off by up to half a pixel
        out = out.float()
        b, xyz, conf = decode(out, threshold, px_nm=g.px_nm, dz_nm=g.dz_nm)
        return self._measure(x, b, xyz, conf)

    @torch.inference_mode()
    def _run_raw(
        self, sets: list[np.ndarray], registration: PlaneRegistration, threshold: float
    ) -> FlatLocs:
        if self._h2d is not None:  # CUDA: the same hand-off as submit_raw, collected now
            return self._finish_raw(self._start_raw(sets, registration), registration, threshold)
        _, h, w = sets[0].shape
        stage = self._stage(h, w)
        stage.load(registration)
        frames = stage(torch.stack([raw_tensor(s) for s in sets]))  # the CPU's input
        return self._decode(self.net(frames), frames, threshold)

    def _decode(self, out: torch.Tensor, frames: torch.Tensor, threshold: float) -> FlatLocs:
        """Localizations of the network output, with photometry on the registered frames."""
        g = self.info.settings.geometry
        b, xyz, conf = decode(out.float(), threshold, px_nm=g.px_nm, dz_nm=g.dz_nm)
        return self._measure(frames, b, xyz, conf)

    @torch.inference_mode()
    def _start_raw(
        self, sets: list[np.ndarray], registration: PlaneRegistration
    ) -> tuple[torch.Tensor, torch.cuda.Event]:
        """CUDA: copy the (pinned) sets to one of two device batches of their shape on the
        copy stream; returns (device batch, copy-done event)."""
        assert self._h2d is not None
        shape = (len(sets), *sets[0].shape)
        dtype = raw_tensor(sets[0][:1, :1, :1]).dtype
        key = (shape, dtype)
        pair = self._staging.get(key)
        if pair is None:
            pair = [torch.empty(shape, dtype=dtype, device=self._torch_device) for _ in range(2)]
            self._staging[key] = pair
        dst = pair[0]
        pair.reverse()  # the other buffer for the next batch: the copies alternate
        self._h2d.wait_stream(torch.cuda.current_stream(self._torch_device))
        with torch.cuda.stream(self._h2d):
            for i, s in enumerate(sets):
                dst[i].copy_(raw_tensor(s), non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._h2d)
        return dst, done

    @torch.inference_mode()
    def _finish_raw(
        self,
        ticket: tuple[torch.Tensor, torch.cuda.Event],
        registration: PlaneRegistration,
        threshold: float,
    ) -> FlatLocs:
        """CUDA: wait for the copy, register and run the network (graph), decode."""
        dst, done = ticket
        torch.cuda.current_stream(self._torch_device).wait_event(done)
        shape = tuple(dst.shape)
        stage = self._stage(shape[2], shape[3])
        stage.load(registration)
        if self.cuda_graphs:
            graph = self._graph_for(
                ("raw", shape, dst.dtype), lambda: _StagedNet(stage, self.net), shape, dst.dtype
            )
            graph.input.copy_(dst)
            graph.graph.replay()
            frames, out = graph.output
        else:
            frames = stage(dst)
            out = self.net(frames)
        return self._decode(out, frames, threshold)

    def _stage(self, height: int, width: int) -> InputStage:
        key = (height, width)
        if key not in self._stages:
            self._stages[key] = InputStage(self.planes, height, width, self._torch_device)
        return self._stages[key]

    def host_buffer(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        return np.empty(shape, dtype) if self._h2d is None else pinned_host_buffer(shape, dtype)

    def _graph(self, x: torch.Tensor) -> _CapturedShape:
        shape = tuple(x.shape)
        fill = float(self.net.input_offset)
        return self._graph_for(("frames", shape), lambda: self.net, shape, torch.float32, fill)

    def _graph_for(
        self,
        key: tuple[object, ...],
        make: object,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        fill: float = 0.0,
    ) -> _CapturedShape:
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return self._graphs[key]
        if len(self._graphs) >= self.max_graphs:
            dropped, _ = self._graphs.popitem(last=False)
            log.debug("dropping CUDA graph %s", dropped)
        log.info("capturing a CUDA graph for %s", key)
        net = make()  # type: ignore[operator]
        self._graphs[key] = _CapturedShape(net, shape, self._torch_device, dtype=dtype, fill=fill)
        return self._graphs[key]

    def close(self) -> None:
        self._graphs.clear()
        self._staging.clear()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()
        super().close()


class _StagedNet(torch.nn.Module):
    """Input stage then network: what a raw-frame CUDA graph captures. Returns the
    registered frames too (the photometry fits them)."""

    def __init__(self, stage: InputStage, net: torch.nn.Module) -> None:
        super().__init__()
        self.stage, self.net = stage, net

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.stage(raw)
        return frames, self.net(frames)


def _device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EngineError(f"unknown torch device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA "
            "GPU; install a CUDA build of torch or use device='cpu'"
        )
    if dev.type not in ("cpu", "cuda"):
        raise EngineError(f"torch backend runs on cpu or cuda, got device {device!r}")
    return dev
