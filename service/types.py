"""Types shared by the service stages: frame sets, batches, lifecycle states, observers."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from service.wire import LocsMessage

if TYPE_CHECKING:
    from service.registration import Registration


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
    """All planes of one time point, as the cameras sent them.

    Attributes:
        frame: frame index (from 0 per acquisition, as the cameras agree on it).
        planes: ``(P, H, W)`` uint16 or float32 camera values (ADU), each plane in its
            camera's pixels: the buffer the ingest copied the payloads into. The engine
            registers them (``registration``) on its device.
        t_cam_ns: earliest camera timestamp of the planes, epoch ns.
        t_recv_ns: when the last plane arrived, epoch ns.
        acquisition: the acquisition it belongs to ("" before any was started).
        registration: the registration to apply (None: identity, gain 1, baseline 0).
        give_back: returns ``planes`` to the slot pool (:meth:`release`).
    """

    frame: int
    planes: np.ndarray
    t_cam_ns: int
    t_recv_ns: int
    acquisition: str = ""
    registration: Registration | None = None
    give_back: Callable[[np.ndarray], None] | None = field(default=None, repr=False)

    def release(self) -> None:
        """Hand the buffer back for reuse (once published or dropped); idempotent."""
        give, self.give_back = self.give_back, None
        if give is not None:
            give(self.planes)

    def registered(self) -> np.ndarray:
        """``(P, H, W)`` float32 model units, registered on the host (tests, tools)."""
        if self.registration is None:
            return self.planes.astype(np.float32)
        return self.registration.registered(self.planes)


@dataclass
class Batch:
    """Frame sets handed to the engine together (consecutive in arrival order)."""

    sets: list[FrameSet] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sets)

    def stack(self) -> np.ndarray:
        """``(B, P, H, W)`` raw camera values (a copy)."""
        return np.stack([s.planes for s in self.sets])

    def release(self) -> None:
        for s in self.sets:
            s.release()


@runtime_checkable
class LocalizationObserver(Protocol):
    """Called by the publisher with every published localization message, in frame order.

    ``observe(msg, frame_set)`` gets the message and the :class:`FrameSet` it was computed
    from: raw camera planes (``frame_set.planes``, ``(P, H, W)`` uint16/float32 ADU) and
    the registration the engine applied (``frame_set.registration``; its ``patches``
    resamples small regions on the host, ``frame_set.registered()`` a whole set). The
    buffer is reused once the call returns: copy what you keep. It runs on the inference
    thread right after the message was sent: keep it short (or hand off to a thread).
    A ``stats() -> dict`` method (optional, so not part of the protocol) is merged into
    ``GET /stats`` under ``observers[name]``.
    """

    name: str

    def observe(self, msg: LocsMessage, frame_set: FrameSet) -> None: ...
