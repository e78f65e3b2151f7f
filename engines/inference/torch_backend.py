"""torch backend: the reference; CPU or CUDA, decode on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.decode import decode
from engines.inference.base import Engine
from engines.modeldir import load_model


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, model: str | Path, *, threshold: float = 0.5, device: str = "cpu") -> None:
        super().__init__(model, threshold=threshold)
        self.device = torch.device(device)
        self.net, _ = load_model(self.model_dir, device=str(self.device))

    @torch.inference_mode()
    def _run(self, frames: np.ndarray, threshold: float):
        g = self.info.settings.geometry
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        out = self.net(x)
        b, xyz, conf = decode(out, threshold, px_nm=g.px_nm, dz_nm=g.dz_nm)
        return b.cpu().numpy(), xyz.cpu().numpy(), conf.cpu().numpy()
