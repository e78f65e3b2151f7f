"""Types shared by the service stages: frame sets, batches, lifecycle states, observers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from service.wire import LocsMessage


class PipelineState(str, enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class CameraState(str, enum.Enum):
    WAITING = "waiting"  # bound, no peer connected yet
    CONNECTED = "connected"  # a peer is connected, no frame yet
    STREAMING = "streaming"  # frames arriving
    DISCONNECTED = "disconnected"  # the peer went away; the endpoint stays bound


@dataclass
class FrameSet:
    """All planes of one time point, registered and in model units.

    Attributes:
        frame: frame index (from 0 per acquisition, as the cameras agree on it).
        planes: ``(P, H, W)`` float32, model units, reference-plane pixels.
        t_cam_ns: earliest camera timestamp of the planes, epoch ns.
        t_recv_ns: when the last plane arrived, epoch ns.
        acquisition: the acquisition it belongs to ("" before any was started).
    """

    frame: int
    planes: np.ndarray
    t_cam_ns: int
    t_recv_ns: int
    acquisition: str = ""


@dataclass
class Batch:
    """Frame sets handed to the engine together (consecutive in arrival order)."""

    sets: list[FrameSet] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sets)

    def stack(self) -> np.ndarray:
        """``(B, P, H, W)`` float32, model units."""
        return np.stack([s.planes for s in self.sets])


@runtime_checkable
class LocalizationObserver(Protocol):
    """Called by the publisher with every published localization message, in frame order.

    ``observe(msg, planes)`` gets the message and the frame set it was computed from:
    ``planes`` is ``(P, H, W)`` float32, registered into the reference plane, model units
    (read-only by convention; keeping a reference is fine). It runs on the inference
    thread right after the message was sent: keep it short (or hand off to a thread).
    A ``stats() -> dict`` method (optional, so not part of the protocol) is merged into
    ``GET /stats`` under ``observers[name]``.
    """

    name: str

    def observe(self, msg: LocsMessage, planes: np.ndarray) -> None: ...
