"""Service settings: one typed object from a TOML file plus ``VOXLOC_*`` environment
variables (docs/protocol.md Sec. 7), validated at start-up and passed down.

Precedence: keyword arguments > environment > TOML file > defaults.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engines.calibration.drift import DriftSettings
from service.runtime_config import (
    AssemblyTimeoutMs,
    DropPolicy,
    MaxBatch,
    MaxDelayMs,
    QueueSize,
    RuntimeConfig,
    Threshold,
)

IDENTITY_AFFINE: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
_ENDPOINT = re.compile(r"^(tcp://[^:/]+:(\*|\d{1,5})|ipc://.+|inproc://.+)$")


def check_endpoint(value: str) -> str:
    """A ZeroMQ endpoint we can bind; port ``*``/``0`` means a random free port."""
    if not _ENDPOINT.match(value):
        raise ValueError(f"expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {value!r}")
    if value.startswith("tcp://"):
        port = value.rsplit(":", 1)[1]
        if port != "*" and not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be 0-65535 or *, got {port} in {value!r}")
    return value


def check_affine(value: Any) -> tuple[tuple[float, float, float], ...]:
    """A 2x3 affine matrix with an invertible 2x2 part, as nested tuples."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (2, 3):
        raise ValueError(f"affine must be a 2x3 matrix, got shape {arr.shape}: {value!r}")
    if not np.isfinite(arr).all():
        raise ValueError(f"affine has non-finite entries: {value!r}")
    det = float(np.linalg.det(arr[:, :2]))
    if abs(det) < 1e-6:
        raise ValueError(f"affine is singular (det {det:.3g}): {value!r}")
    return tuple((float(row[0]), float(row[1]), float(row[2])) for row in arr)


class CameraRegistration(BaseModel):
    """Per-camera registration into the reference plane and ADU -> model units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    affine: tuple[tuple[float, float, float], ...] = IDENTITY_AFFINE
    gain_adu: float = Field(1.0, gt=0, description="ADU per model unit")
    baseline_adu: float = Field(0.0, ge=0, le=65535)

    _check_affine = field_validator("affine", mode="before")(check_affine)


class CameraSettings(CameraRegistration):
    name: str = Field(min_length=1, max_length=64)
    plane: int = Field(ge=0, le=7)
    endpoint: str
    dtype: Literal["uint16", "float32"] | None = None

    _check_endpoint = field_validator("endpoint")(check_endpoint)

    def registration(self) -> CameraRegistration:
        return CameraRegistration(
            affine=self.affine, gain_adu=self.gain_adu, baseline_adu=self.baseline_adu
        )


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8750, ge=0, le=65535)
    token: str = ""
    allow_insecure: bool = Field(False, description="allow a non-loopback host without token")

    @model_validator(mode="after")
    def _safe_bind(self) -> ApiSettings:
        if not self.token and not self.allow_insecure and not _is_loopback(self.host):
            raise ValueError(
                f"api.host {self.host!r} is not loopback: set api.token "
                "(or api.allow_insecure = true)"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StreamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    publish: str = "tcp://127.0.0.1:5560"
    planes: int = Field(4, ge=1, le=8)
    height: int = Field(64, ge=1, le=8192)
    width: int = Field(64, ge=1, le=8192)
    assembly_timeout_ms: AssemblyTimeoutMs = 500.0
    window: int = Field(256, ge=2, le=100_000, description="max frame sets being assembled")
    rcvhwm: int = Field(64, ge=1, le=1_000_000)
    sndhwm: int = Field(10_000, ge=1, le=10_000_000)

    _check_publish = field_validator("publish")(check_endpoint)


class InferenceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    backend: str = "auto"
    precision: Literal["fp32", "fp16", "bf16"] | None = Field(
        None,
        description="network arithmetic; None: the backend's default (auto: bf16 on "
        "CPUs with native bfloat16, fp32 elsewhere)",
    )
    threshold: Threshold = 0.5
    max_batch: MaxBatch = 8
    max_delay_ms: MaxDelayMs = 5.0
    queue_size: QueueSize = 64
    drop_policy: DropPolicy = DropPolicy.DROP_OLDEST


def default_cameras() -> list[CameraSettings]:
    return [
        CameraSettings(name=f"cam{k}", plane=k, endpoint=f"tcp://127.0.0.1:{5550 + k}")
        for k in range(4)
    ]


class RecordingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: Path = Field(
        Path("recordings"),
        description="server-side recordings (POST /acquisitions) are written below this folder",
    )


class ServiceSettings(BaseSettings):
    """Everything ``voxloc serve`` needs."""

    model_config = SettingsConfigDict(
        env_prefix="VOXLOC_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    name: str = Field("voxloc", min_length=1)
    api: ApiSettings = ApiSettings()
    stream: StreamSettings = StreamSettings()
    inference: InferenceSettings = InferenceSettings()
    cameras: list[CameraSettings] = Field(default_factory=default_cameras)
    drift: DriftSettings = DriftSettings()
    recording: RecordingSettings = RecordingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @model_validator(mode="after")
    def _check_cameras(self) -> ServiceSettings:
        planes = sorted(c.plane for c in self.cameras)
        if planes != list(range(self.stream.planes)):
            raise ValueError(
                f"expected one camera per plane 0..{self.stream.planes - 1}, got planes {planes}"
            )
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        endpoints = [c.endpoint for c in self.cameras if not c.endpoint.endswith(":*")]
        endpoints += [self.stream.publish] if not self.stream.publish.endswith(":*") else []
        dup = {e for e in endpoints if endpoints.count(e) > 1 and not e.endswith(":0")}
        if dup:
            raise ValueError(f"endpoints used twice: {sorted(dup)}")
        return self

    def runtime_config(self) -> RuntimeConfig:
        """The run-time part of these settings: each key from the section that holds it."""
        values = {
            key: getattr(section, key)
            for section in (self.inference, self.stream)
            for key in RuntimeConfig.model_fields
            if key in type(section).model_fields
        }
        return RuntimeConfig(**values)

    def camera(self, name: str) -> CameraSettings:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"unknown camera {name!r}; configured: {[c.name for c in self.cameras]}")


def load_settings(path: str | Path | None = None, **overrides: Any) -> ServiceSettings:
    """Settings from ``path`` (TOML) + environment + ``overrides``; errors name the value."""
    if path is None:
        return ServiceSettings(**overrides)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    cls = type(
        "ServiceSettingsFromFile",
        (ServiceSettings,),
        {"model_config": {**ServiceSettings.model_config, "toml_file": path}},
    )
    return cls(**overrides)
