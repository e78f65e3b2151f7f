"""Model directories: ``weights.pt`` + ``model.json`` (name, version, geometry, PSF/noise,
training command, seed and metrics).

Models are looked up by directory path or by name in, in order: the directories of
``$VOXLOC_MODELS`` (``os.pathsep``-separated), ``~/.local/share/voxloc/models`` and the
models shipped inside the package (``default``).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engines.config import SimSettings
from engines.errors import EngineError, ModelNotFoundError
from engines.io.atomic import atomic_output, write_json
from engines.network import DEFAULT_CHANNELS, DEFAULT_KERNELS, VoxelNet
from engines.precision import PrecisionCalibration

MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
FORMAT_VERSION = 1
SHIPPED_MODELS = Path(__file__).parent / "models"


class ModelInfo(BaseModel):
    """Contents of ``model.json``."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    name: str
    version: str = "1"
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    settings: SimSettings = SimSettings()
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    kernels: tuple[int, ...] = DEFAULT_KERNELS
    input_offset: float = 0.0
    input_scale: float = 1.0
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    precision: PrecisionCalibration | None = None  # engines.precision; None: NaN precision

    @property
    def planes(self) -> int:
        return self.settings.geometry.planes

    def build(self) -> VoxelNet:
        return VoxelNet(
            self.planes,
            channels=self.channels,
            kernels=self.kernels,
            input_offset=self.input_offset,
            input_scale=self.input_scale,
        )


def search_path() -> list[Path]:
    env = os.environ.get("VOXLOC_MODELS", "")
    dirs = [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(Path.home() / ".local" / "share" / "voxloc" / "models")
    dirs.append(SHIPPED_MODELS)
    return dirs


def available_models() -> dict[str, Path]:
    """Model name -> directory, first hit on the search path wins."""
    found: dict[str, Path] = {}
    for root in search_path():
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if (d / MODEL_JSON).is_file() and d.name not in found:
                found[d.name] = d
    return found


def resolve_model(name_or_dir: str | os.PathLike) -> Path:
    """Directory of a model given by path or by name; :class:`ModelNotFoundError` if none."""
    p = Path(name_or_dir)
    if (p / MODEL_JSON).is_file():
        return p
    models = available_models()
    if str(name_or_dir) in models:
        return models[str(name_or_dir)]
    names = ", ".join(sorted(models)) or "none"
    raise ModelNotFoundError(
        f"unknown model {str(name_or_dir)!r}: not a model directory and not one of the "
        f"installed models ({names})"
    )


def read_info(model_dir: Path) -> ModelInfo:
    path = Path(model_dir) / MODEL_JSON
    try:
        info = ModelInfo.model_validate_json(path.read_text())
    except (OSError, ValidationError, ValueError) as exc:
        raise EngineError(f"cannot read model description {path}: {exc}") from exc
    from engines.psf_model import resolve_spline  # a spline PSF is stored beside the weights

    info.settings = resolve_spline(info.settings, Path(model_dir))
    return info


def load_model(name_or_dir: str | os.PathLike, device: str = "cpu") -> tuple[VoxelNet, ModelInfo]:
    """Load a model (eval mode) and its description."""
    model_dir = resolve_model(name_or_dir)
    info = read_info(model_dir)
    net = info.build()
    wpath = model_dir / WEIGHTS
    try:
        state = torch.load(wpath, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # torch raises many types for corrupt or mismatched files
        raise EngineError(f"cannot load weights {wpath}: {exc}") from exc
    return net.to(device).eval(), info


def save_model(net: VoxelNet, info: ModelInfo, model_dir: Path) -> Path:
    """Write weights and ``model.json`` atomically (:mod:`engines.io.atomic`)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_output(model_dir / WEIGHTS) as tmp:
        torch.save(state, tmp)
    write_info(info, model_dir)
    return model_dir


def write_info(info: ModelInfo, model_dir: Path) -> None:
    """Write ``model.json`` atomically."""
    write_json(Path(model_dir) / MODEL_JSON, info.model_dump(mode="json"))
