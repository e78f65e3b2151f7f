"""Inference form of :class:`~engines.network.VoxelNet`: batch norm folded into the convolutions.

Training keeps conv -> BN -> ReLU; at inference BN is an affine map per channel, so it folds
into the preceding (bias-free) convolution: ``w' = w * g / sqrt(v + eps)``,
``b' = beta - m * g / sqrt(v + eps)``. That removes seven full passes over the activations.
The ONNX export and the torch backend both use the same folded parameters, so ONNX Runtime,
TensorRT and torch run the same arithmetic up to kernel rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engines.network import OUTPUTS_PER_VOXEL, VoxelNet


@dataclass(frozen=True)
class FoldedConv:
    """One convolution after folding: ``weight (C_out, C_in, k, k)``, ``bias (C_out,)``, float32."""

    weight: np.ndarray
    bias: np.ndarray
    relu: bool

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[-1])


def fold_batchnorm(net: VoxelNet) -> list[FoldedConv]:
    """Folded layers of ``net`` in order: 7 conv+ReLU layers, then the head (no ReLU)."""
    mods = list(net.features)
    layers: list[FoldedConv] = []
    for conv, bn in zip(mods[0::3], mods[1::3], strict=True):
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"expected Conv2d -> BatchNorm2d, got {type(conv)} -> {type(bn)}")
        if bn.running_mean is None or bn.running_var is None:
            raise TypeError(f"expected BatchNorm2d with running statistics, got {bn}")
        w = conv.weight.detach().double()
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.detach().double() - bn.running_mean.double() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.detach().double() * scale
        layers.append(_folded(w * scale[:, None, None, None], bias, relu=True))
    head = net.head
    head_bias = head.bias.detach().double() if head.bias is not None else None
    if head_bias is None:
        head_bias = torch.zeros(head.out_channels, dtype=torch.float64)
    layers.append(_folded(head.weight.detach().double(), head_bias, relu=False))
    return layers


def _folded(w: torch.Tensor, b: torch.Tensor, *, relu: bool) -> FoldedConv:
    return FoldedConv(w.float().cpu().numpy(), b.float().cpu().numpy(), relu)


class FusedVoxelNet(nn.Module):
    """Raw frames ``(B, P, H, W)`` -> ``(B, P, 4, H, W)`` sigmoid outputs, BN folded.

    The input normalisation runs in float32 (raw uint16 values overflow float16); the
    convolutions run in ``dtype`` (float32; float16 on CUDA; bfloat16 on CUDA or on CPUs with
    native bfloat16), and the sigmoid in float32 again, so the sub-voxel offsets are not
    rounded to the reduced precision's 8 (bf16) or 11 (fp16) significant bits.
    """

    input_offset: torch.Tensor  # buffers, registered in __init__
    input_scale: torch.Tensor

    def __init__(self, net: VoxelNet, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.planes = net.planes
        self.compute_dtype = dtype
        self.register_buffer("input_offset", net.input_offset.detach().clone().float())
        self.register_buffer("input_scale", net.input_scale.detach().clone().float())
        convs: list[nn.Module] = []
        for layer in fold_batchnorm(net):
            c_out, c_in, k, _ = layer.weight.shape
            conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=True)
            assert conv.bias is not None  # bias=True
            conv.weight.data.copy_(torch.from_numpy(layer.weight))
            conv.bias.data.copy_(torch.from_numpy(layer.bias))
            convs.append(conv)
            if layer.relu:
                convs.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*convs)
        self.to(net.input_offset.device)
        self.body.to(dtype)
        self.eval()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, p, h, w = frames.shape
        x = (frames.float() - self.input_offset) / self.input_scale
        z = self.body(x.to(self.compute_dtype))
        y = torch.sigmoid(z if z.dtype == torch.float32 else z.float())
        return y.view(b, p, OUTPUTS_PER_VOXEL, h, w)
