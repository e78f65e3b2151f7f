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
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from engines.decode import decode
from engines.errors import EngineError
from engines.inference import hardware
from engines.inference.base import BackendUnavailableError, Engine, FlatLocs
from engines.inference.fused import FusedVoxelNet
from engines.modeldir import load_model

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CPU_PRECISIONS = ("fp32", "bf16")


class _CapturedShape:
    """A CUDA graph of the network for one input shape, with its static buffers."""

    def __init__(self, net: FusedVoxelNet, shape: tuple[int, ...], device: torch.device) -> None:
        self.input = torch.zeros(shape, dtype=torch.float32, device=device)
        self.input.fill_(float(net.input_offset))
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
        return self.output


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
        net, _ = load_model(self.model_dir, device=self.device)
        self.precision = precision
        self.net = FusedVoxelNet(net, dtype=PRECISIONS[precision])
        if not cuda:
            # torch's Module.to overloads omit its documented memory_format= form
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.cuda_graphs = cuda_graphs
        self.pad_batch = cuda_graphs
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[int, ...], _CapturedShape] = OrderedDict()
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
        return b.cpu().numpy(), xyz.cpu().numpy(), conf.cpu().numpy()

    def _graph(self, x: torch.Tensor) -> _CapturedShape:
        shape = tuple(x.shape)
        if shape in self._graphs:
            self._graphs.move_to_end(shape)
            return self._graphs[shape]
        if len(self._graphs) >= self.max_graphs:
            dropped, _ = self._graphs.popitem(last=False)
            log.debug("dropping CUDA graph for shape %s", dropped)
        log.info("capturing a CUDA graph for input shape %s", shape)
        self._graphs[shape] = _CapturedShape(self.net, shape, self._torch_device)
        return self._graphs[shape]

    def close(self) -> None:
        self._graphs.clear()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()
        super().close()


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
