"""The voxel-wise regression FCN of paper Sec. 3.2 / Fig. 3.

Eight convolution layers that keep H x W: channels ``[planes, 16, 32, 64, 128, 64, 32, 16]``
with kernels 5, 5, 3, 3, 3, 3, 3 (conv -> BN -> ReLU), then a 3x3 head with sigmoid that
gives, for every plane, 4 values per pixel: confidence and sub-voxel (x, y, z).
Input normalisation is a fixed affine map inside the model, so callers pass raw frames.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 64, 32, 16)
DEFAULT_KERNELS: tuple[int, ...] = (5, 5, 3, 3, 3, 3, 3)
HEAD_KERNEL = 3
OUTPUTS_PER_VOXEL = 4  # confidence, zeta_x, zeta_y, zeta_z


class VoxelNet(nn.Module):
    """Raw frames ``(B, P, H, W)`` -> ``(B, P, 4, H, W)`` in [0, 1]."""

    input_offset: torch.Tensor  # buffers, registered in __init__
    input_scale: torch.Tensor

    def __init__(
        self,
        planes: int = 4,
        *,
        channels: tuple[int, ...] = DEFAULT_CHANNELS,
        kernels: tuple[int, ...] = DEFAULT_KERNELS,
        input_offset: float = 0.0,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if len(channels) != len(kernels):
            raise ValueError(f"{len(channels)} channel widths but {len(kernels)} kernels")
        if input_scale <= 0:
            raise ValueError(f"input_scale must be > 0, got {input_scale}")
        self.planes = planes
        self.register_buffer("input_offset", torch.tensor(float(input_offset)))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)))
        layers: list[nn.Module] = []
        c_in = planes
        for c_out, k in zip(channels, kernels, strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, OUTPUTS_PER_VOXEL * planes, HEAD_KERNEL, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, p, h, w = frames.shape
        x = (frames.float() - self.input_offset) / self.input_scale
        y = torch.sigmoid(self.head(self.features(x)))
        return y.view(b, p, OUTPUTS_PER_VOXEL, h, w)

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid head output ``(B, P, 4, H, W)``, for a numerically stable loss."""
        b, p, h, w = frames.shape
        x = (frames.float() - self.input_offset) / self.input_scale
        return self.head(self.features(x)).view(b, p, OUTPUTS_PER_VOXEL, h, w)


def macs_per_pixel(
    planes: int = 4,
    channels: tuple[int, ...] = DEFAULT_CHANNELS,
    kernels: tuple[int, ...] = DEFAULT_KERNELS,
) -> int:
    """Multiply-accumulates per output pixel of one forward pass (BN folded)."""
    total, c_in = 0, planes
    for c_out, k in zip(channels, kernels, strict=True):
        total += c_in * c_out * k * k
        c_in = c_out
    return total + c_in * OUTPUTS_PER_VOXEL * planes * HEAD_KERNEL**2


def flops_per_frame(planes: int, height: int, width: int) -> float:
    """FLOPs (2 per MAC) of one frame's forward pass."""
    return 2.0 * macs_per_pixel(planes) * height * width
