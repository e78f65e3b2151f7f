"""Request bodies of the control plane (answers: :mod:`service.api.answers`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from service.runtime_config import RuntimeConfig, all_optional

if TYPE_CHECKING:  # its fields are made at import time, which a type checker cannot see
    ConfigUpdate = BaseModel
else:
    ConfigUpdate = all_optional(
        RuntimeConfig, "ConfigUpdate", "Any subset of the run-time configuration."
    )


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
