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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
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
    Refine,
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


# Bounds of a registration (docs/protocol.md Sec. 5, PUT /registration); a value outside
# them is a typo or a unit mix-up, never a real microscope.
GAIN_RANGE = (1e-3, 1e4)  # ADU per model unit
AFFINE_SCALE_RANGE = (0.2, 5.0)  # singular values of the 2x2 part (pixel size ratio)
AFFINE_MAX_CONDITION = 10.0  # largest / smallest singular value (shear, anisotropy)
MAX_TRANSLATION_FRAMES = 2.0  # |translation| at most this many frame widths / heights
MAX_TRANSLATION_PX = MAX_TRANSLATION_FRAMES * 8192  # before the frame size is known


def check_affine(value: Any) -> tuple[tuple[float, float, float], ...]:
    """A 2x3 affine matrix, finite, well conditioned and with a pixel scale in
    :data:`AFFINE_SCALE_RANGE`, as nested tuples."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"affine must be a 2x3 matrix of numbers, got {value!r}") from exc
    if arr.shape != (2, 3):
        raise ValueError(f"affine must be a 2x3 matrix, got shape {arr.shape}: {value!r}")
    if not np.isfinite(arr).all():
        raise ValueError(f"affine has non-finite entries: {value!r}")
    lo, hi = AFFINE_SCALE_RANGE
    if np.abs(arr[:, :2]).max() > hi:  # a singular value is at least the largest entry
        raise ValueError(f"affine scales pixels by more than {hi:g}: {value!r}")
    det = float(np.linalg.det(arr[:, :2]))
    if abs(det) < 1e-6:
        raise ValueError(f"affine is singular (det {det:.3g}): {value!r}")
    s = np.linalg.svd(arr[:, :2], compute_uv=False)
    if s.min() < lo or s.max() > hi:
        raise ValueError(
            f"affine scales pixels by {s.min():.3g}..{s.max():.3g}, expected within "
            f"{lo:g}..{hi:g}: {value!r}"
        )
    if s.max() / s.min() > AFFINE_MAX_CONDITION:
        raise ValueError(
            f"affine is ill-conditioned (condition number {s.max() / s.min():.3g}, at most "
            f"{AFFINE_MAX_CONDITION:g}): {value!r}"
        )
    if np.abs(arr[:, 2]).max() > MAX_TRANSLATION_PX:
        raise ValueError(
            f"affine translation {arr[:, 2].tolist()} px is beyond {MAX_TRANSLATION_PX:g} px"
        )
    return tuple((float(row[0]), float(row[1]), float(row[2])) for row in arr)


def check_translation(
    affine: tuple[tuple[float, float, float], ...], height: int, width: int
) -> None:
    """ValueError when the affine moves pixels by more than ``MAX_TRANSLATION_FRAMES``
    frame sizes (``height`` x ``width``)."""
    tx, ty = affine[0][2], affine[1][2]
    k = MAX_TRANSLATION_FRAMES
    if abs(tx) > k * width or abs(ty) > k * height:
        raise ValueError(
            f"affine translation ({tx:g}, {ty:g}) px is more than {k:g} frames "
            f"({width}x{height} px) away"
        )


class CameraRegistration(BaseModel):
    """Per-camera registration into the reference plane and ADU -> model units.

    Validated with ``context={"frame": (height, width)}``, the affine translation is also
    bounded by the frame size (:func:`check_translation`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    affine: tuple[tuple[float, float, float], ...] = IDENTITY_AFFINE
    gain_adu: float = Field(
        1.0, ge=GAIN_RANGE[0], le=GAIN_RANGE[1], description="ADU per model unit"
    )
    baseline_adu: float = Field(0.0, ge=0, le=65535)

    _check_affine = field_validator("affine", mode="before")(check_affine)

    @field_validator("affine")
    @classmethod
    def _check_translation(
        cls, value: tuple[tuple[float, float, float], ...], info: ValidationInfo
    ) -> tuple[tuple[float, float, float], ...]:
        frame = (info.context or {}).get("frame")
        if frame is not None:
            check_translation(value, *frame)
        return value


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
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser origins besides the service's own allowed to change it "
        "without a token, e.g. http://scope-pc:8750 (docs/deploy.md)",
    )

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
    ingest_threads: Literal["auto", "one", "per_camera"] = Field(
        "auto",
        description="receive every camera in one thread, or each in its own; auto: one, "
        "unless frames are >= 1 MiB and the host has more than two cores per camera "
        "(service/receivers.py, docs/performance.md)",
    )

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
    refine: Refine = False
    max_batch: MaxBatch = 8
    max_delay_ms: MaxDelayMs = 5.0
    queue_size: QueueSize = 64
    drop_policy: DropPolicy = DropPolicy.DROP_OLDEST


class SecuritySettings(BaseModel):
    """ZeroMQ CURVE on the camera and localization sockets (service/curve.py); off by
    default, for loopback use. ``voxloc keys DIR`` makes the files."""

    model_config = ConfigDict(extra="forbid")

    curve: bool = Field(False, description="encrypt and authenticate the ZeroMQ streams")
    server_key: Path | None = Field(
        None, description="the service's key pair: the service.key_secret file of voxloc keys"
    )
    client_keys: Path | None = Field(
        None, description="directory of the allowed clients' public keys (*.key)"
    )

    @model_validator(mode="after")
    def _files(self) -> SecuritySettings:
        if not self.curve:
            return self
        if self.server_key is None or not self.server_key.is_file():
            raise ValueError(
                f"security.server_key must be the service's .key_secret file, got "
                f"{self.server_key} (make one with `voxloc keys DIR`)"
            )
        if self.client_keys is None or not self.client_keys.is_dir():
            raise ValueError(
                f"security.client_keys must be a directory of allowed client keys, got "
                f"{self.client_keys} (make one with `voxloc keys DIR`)"
            )
        return self


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
    security: SecuritySettings = SecuritySettings()

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
        for cam in self.cameras:
            try:
                check_translation(cam.affine, self.stream.height, self.stream.width)
            except ValueError as exc:
                raise ValueError(f"cameras.{cam.name}.affine: {exc}") from exc
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
