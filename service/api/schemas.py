"""Request bodies and answers of the control plane (docs/protocol.md Sec. 5).

Answers forbid extra keys, so a route that returns more than its model documents fails
its tests instead of drifting away from the OpenAPI spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict

from service.runtime_config import DropPolicy, RuntimeConfig, all_optional
from service.settings import (
    AFFINE_MAX_CONDITION,
    AFFINE_SCALE_RANGE,
    GAIN_RANGE,
    MAX_TRANSLATION_FRAMES,
)
from service.types import CameraState, PipelineState

# -- requests ------------------------------------------------------------------------------
if TYPE_CHECKING:  # its fields are made at import time, which a type checker cannot see
    ConfigUpdate = BaseModel
else:
    ConfigUpdate = all_optional(
        RuntimeConfig, "ConfigUpdate", "Any subset of the run-time configuration.", strict=True
    )


StrictNumber = Annotated[float, Strict()]


class CameraRegistrationUpdate(BaseModel):
    """Bounds: ``service.settings.CameraRegistration`` (docs/protocol.md Sec. 5)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    affine: list[Annotated[list[StrictNumber], Field(min_length=3, max_length=3)]] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="2x3 matrix, camera pixels -> reference pixels: pixel scale "
        f"{AFFINE_SCALE_RANGE[0]:g}..{AFFINE_SCALE_RANGE[1]:g}, condition number at most "
        f"{AFFINE_MAX_CONDITION:g}, translation at most {MAX_TRANSLATION_FRAMES:g} "
        "frame sizes",
    )
    gain_adu: StrictNumber | None = Field(
        None, ge=GAIN_RANGE[0], le=GAIN_RANGE[1], description="ADU per model unit"
    )
    baseline_adu: StrictNumber | None = Field(None, ge=0, le=65535)


class RegistrationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cameras: dict[str, CameraRegistrationUpdate] = Field(description="by camera name")


# -- answers -------------------------------------------------------------------------------
class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorAnswer(Answer):
    detail: str = Field(description="what was expected and what arrived")


class Live(Answer):
    status: Literal["live"]
    state: PipelineState
    instance: str = Field(
        description="id of this service process (voxloc serve --instance-id; default random)"
    )


class Ready(Answer):
    ready: Literal[True]
    state: PipelineState
    model: str
    version: str
    backend: str


class ModelSummary(Answer):
    """A loaded model."""

    name: str
    version: str
    backend: str = Field(description="engine backend and device, e.g. torch/cpu")
    dir: str
    planes: int


class AvailableModel(Answer):
    name: str
    version: str
    dir: str
    planes: int


class UnreadableModel(Answer):
    """A model directory whose description could not be read."""

    name: str
    dir: str
    error: str


class Models(Answer):
    active: ModelSummary | None
    loading: str | None = Field(description="the model being loaded, if any")
    available: list[AvailableModel | UnreadableModel]


class ModelSwitch(Answer):
    active: ModelSummary
    previous: ModelSummary | None


class CameraRegistrationState(Answer):
    plane: int
    affine: list[list[float]] = Field(description="2x3 matrix, camera pixels -> reference pixels")
    gain_adu: float = Field(description="ADU per model unit")
    baseline_adu: float


class Registration(Answer):
    cameras: dict[str, CameraRegistrationState]


class CameraStats(Answer):
    """Counters of one camera; endpoint, plane and state once the pipeline has started."""

    frames_in: int
    frames_ok: int
    rejects: dict[str, int] = Field(description="rejected messages per reason")
    connects: int
    disconnects: int
    last_frame: int | None
    endpoint: str | None = None
    plane: int | None = None
    state: CameraState | None = None


class CameraSyncStats(Answer):
    state: str = Field(description="synced, resyncing or desynchronised (service/sync.py)")
    offset: int = Field(description="the camera's frame index minus the frame-set index")
    resyncs: int


class AssemblerStats(Answer):
    assembled: int
    dropped: dict[str, int] = Field(description="frame sets dropped per reason")
    pending: int
    acquisition: str = Field(description="the current acquisition ('' before any started)")
    cameras: dict[str, CameraSyncStats] = Field(description="per camera, its synchronisation")
    ingest_threads: Literal["one", "per_camera"] | None = Field(
        None, description="how the cameras are received ([stream] ingest_threads)"
    )


class BatcherStats(Answer):
    dropped: int
    depth: int
    queue_size: int
    policy: DropPolicy


class InferenceStats(Answer):
    batches: int
    frame_sets: int
    mean_batch_size: float
    engine_busy_s: float
    model_swaps: int
    failed_loads: int


class PublisherStats(Answer):
    published: int
    endpoint: str | None
    seq: int = Field(description="sequence number of the last message, -1 before the first")
    subscribers: int


class Latency(Answer):
    """Camera timestamp to publish, over the last 2048 frame sets (None before any)."""

    p50: float | None
    p99: float | None
    count: int


class StreamHealth(Answer):
    state: Literal["idle", "streaming", "stalled"] = Field(
        description="idle: no camera sent within twice the assembly timeout; streaming: "
        "frame sets were published within it; stalled: frames arrive, nothing is published"
    )
    healthy: bool
    cameras: dict[str, list[str]] = Field(
        description="per camera, why it holds the stream up: silent, rejected (with the "
        "counts by reason), resyncing or desynchronised"
    )


class Stats(Answer):
    uptime_s: float
    cameras: dict[str, CameraStats]
    rejects: dict[str, int] = Field(description="rejected messages per reason, all cameras")
    assembler: AssemblerStats
    batcher: BatcherStats
    inference: InferenceStats
    publisher: PublisherStats
    fps_in: float = Field(description="frame sets assembled per second over the last 5 s")
    fps_out: float = Field(description="frame sets published per second over the last 5 s")
    latency_ms: Latency
    state: PipelineState
    model: ModelSummary | None
    observers: dict[str, dict[str, Any]] = Field(description="stats of each observer, by name")
    stream: StreamHealth
