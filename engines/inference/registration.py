"""The engines' input stage: raw camera planes in, registered frames in model units out.

Each plane has a 2x3 affine ``A`` (pixels) from its camera's coordinates ``(x, y)`` to the
reference plane's, a gain (ADU per model unit) and a baseline (ADU). Pixel ``(i, j)`` has
its centre at ``(j + 0.5, i + 0.5)`` (docs/conventions); a registered pixel is the
camera image sampled bilinearly at ``A^-1`` of its centre, clamped to the image
(``padding_mode="border"``), then ``(adu - baseline) / gain``: the convention and the
sub-pixel result of the service's host warp (``service.registration.PlaneWarp``, kept as the
test reference).

The sampling is a normalised ``grid_sample`` grid (``align_corners=False``: normalised
``-1`` and ``1`` are the image's outer edges), so the same numbers drive torch
(:class:`InputStage`, inside the CUDA graph on GPU) and the exported ONNX graph
(:func:`input_stage_nodes`, ``GridSample``), where grid, gain and baseline are runtime
inputs like the threshold: a new registration needs no rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True, eq=False)
class PlaneRegistration:
    """Registration of every plane, by plane index.

    Attributes:
        affine_px: ``(P, 2, 3)`` float64, camera -> reference pixel coordinates.
        gain_adu: ``(P,)`` float32, ADU per model unit.
        baseline_adu: ``(P,)`` float32, ADU.
    """

    affine_px: np.ndarray
    gain_adu: np.ndarray
    baseline_adu: np.ndarray
    _grids: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def identity(cls, planes: int) -> PlaneRegistration:
        return cls.create(affine_px=np.broadcast_to(IDENTITY, (planes, 2, 3)))

    @classmethod
    def create(
        cls,
        *,
        affine_px: np.ndarray,
        gain_adu: np.ndarray | float = 1.0,
        baseline_adu: np.ndarray | float = 0.0,
    ) -> PlaneRegistration:
        a = np.array(affine_px, dtype=np.float64).reshape(-1, 2, 3)
        p = a.shape[0]
        gain = np.broadcast_to(np.asarray(gain_adu, np.float32), (p,)).copy()
        base = np.broadcast_to(np.asarray(baseline_adu, np.float32), (p,)).copy()
        if np.any(gain <= 0):
            raise ValueError(f"gains must be > 0, got {gain.tolist()}")
        if np.any(np.abs(np.linalg.det(a[:, :, :2])) < 1e-9):
            raise ValueError("an affine of the registration is singular")
        return cls(a, gain, base)

    @property
    def planes(self) -> int:
        return int(self.affine_px.shape[0])

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.affine_px, np.broadcast_to(IDENTITY, self.affine_px.shape)))

    def grid(self, height: int, width: int) -> np.ndarray:
        """``(P, H, W, 2)`` float32 normalised sampling grid (x, y), cached per shape."""
        key = (int(height), int(width))
        if key not in self._grids:
            self._grids[key] = sampling_grid(self.affine_px, *key)
        return self._grids[key]

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """``(1, P, 1, 1)`` float32 baseline and gain, broadcast over a batch."""
        shape = (1, self.planes, 1, 1)
        return self.baseline_adu.reshape(shape), self.gain_adu.reshape(shape)


def sampling_grid(affine_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(P, H, W, 2)`` float32: where each reference pixel centre lies in its camera,
    normalised for ``grid_sample(align_corners=False)``."""
    h, w = height, width
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    out = np.empty((len(affine_px), h, w, 2), np.float32)
    for k, a in enumerate(np.asarray(affine_px, np.float64)):
        inv = np.linalg.inv(a[:, :2])
        ref = np.stack([xx.ravel() - a[0, 2], yy.ravel() - a[1, 2]])
        cam_x, cam_y = inv @ ref
        out[k, ..., 0] = (2.0 * cam_x / w - 1.0).reshape(h, w)
        out[k, ..., 1] = (2.0 * cam_y / h - 1.0).reshape(h, w)
    return out


def as_float(raw: torch.Tensor) -> torch.Tensor:
    """Camera values as float32. uint16 frames may travel as int16 bit patterns (torch
    has few uint16 kernels, on CUDA in particular; cameras never send int16): both are
    widened through int32."""
    if raw.dtype in (torch.uint16, torch.int16):
        return (raw.view(torch.int16).to(torch.int32) & 0xFFFF).float()
    return raw.float()


def raw_tensor(frames: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``frames``' memory; uint16 as int16 bit patterns (see :func:`as_float`)."""
    arr = np.ascontiguousarray(frames)
    return torch.from_numpy(arr.view(np.int16) if arr.dtype == np.uint16 else arr)


def pinned_host_buffer(shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """A host array in pinned (page-locked) memory, for frames bound for a CUDA device:
    their copy to it is asynchronous DMA. uint16 is held as int16 (see :func:`as_float`)
    and viewed back as uint16."""
    host = torch.empty(shape, dtype=raw_tensor(np.zeros(1, dtype)).dtype, pin_memory=True)
    arr = host.numpy()
    return arr.view(np.uint16) if np.dtype(dtype) == np.uint16 else arr


def register(
    raw: torch.Tensor, grid: torch.Tensor | None, baseline: torch.Tensor, gain: torch.Tensor
) -> torch.Tensor:
    """``(B, P, H, W)`` raw camera values -> registered float32 model units.

    ``grid`` ``(P, H, W, 2)`` (None: identity), ``baseline``/``gain`` ``(1, P, 1, 1)``.
    Planes go on grid_sample's batch axis and frames on its channel axis, so one call
    registers the whole batch with one grid per plane.
    """
    x = as_float(raw)
    if grid is not None:
        x = F.grid_sample(
            x.transpose(0, 1), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).transpose(0, 1)
    return (x - baseline) / gain


class InputStage(torch.nn.Module):
    """:func:`register` with its parameters in buffers on the engine's device.

    :meth:`load` copies a registration into the same buffers (no reallocation), so a CUDA
    graph captured over this stage stays valid when the registration changes.
    """

    grid: torch.Tensor
    baseline: torch.Tensor
    gain: torch.Tensor

    def __init__(self, planes: int, height: int, width: int, device: torch.device) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.register_buffer("grid", torch.zeros((planes, height, width, 2), device=device))
        self.register_buffer("baseline", torch.zeros((1, planes, 1, 1), device=device))
        self.register_buffer("gain", torch.ones((1, planes, 1, 1), device=device))
        self.loaded: PlaneRegistration | None = None
        self.load(PlaneRegistration.identity(planes))

    def load(self, reg: PlaneRegistration) -> None:
        if reg is self.loaded:
            return
        base, gain = reg.scale_shift()
        self.grid.copy_(torch.from_numpy(reg.grid(self.height, self.width)))
        self.baseline.copy_(torch.from_numpy(base))
        self.gain.copy_(torch.from_numpy(gain))
        self.loaded = reg

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return register(raw, self.grid, self.baseline, self.gain)
