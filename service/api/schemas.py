"""Request bodies of the control plane (answers are plain JSON maps, docs/protocol.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.settings import DropPolicy


class ConfigUpdate(BaseModel):
    """Any subset of the run-time configuration."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, ge=0, lt=1)
    max_batch: int | None = Field(None, ge=1, le=1024)
    max_delay_ms: float | None = Field(None, ge=0, le=10_000)
    queue_size: int | None = Field(None, ge=1, le=100_000)
    drop_policy: DropPolicy | None = None
    assembly_timeout_ms: float | None = Field(None, gt=0, le=600_000)


class CameraRegistrationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    affine: list[list[float]] | None = Field(
        None, description="2x3 matrix, camera pixels -> reference pixels"
    )
    gain_adu: float | None = Field(None, gt=0)
    baseline_adu: float | None = Field(None, ge=0, le=65535)


class RegistrationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cameras: dict[str, CameraRegistrationUpdate]
