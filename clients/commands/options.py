"""Options shared by several commands, and defaults read from the library that owns them.

A command's defaults are not retyped here: an option's default is a :class:`Default`
naming the config object (or function) whose field holds it. Only ``--help`` looks the
value up, so building the parser imports no torch; :func:`given` drops options the user
did not give, and the config object then applies its own default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from engines.config import Geometry, NoiseParams, PSFParams, SimSettings

T = TypeVar("T")


class Default:
    """The default of field (or keyword) ``name`` of ``owner`` (``"package.module:Object"``)."""

    def __init__(self, owner: str, name: str) -> None:
        self.owner = owner
        self.name = name

    @functools.cached_property
    def value(self) -> Any:
        module, _, attr = self.owner.partition(":")
        return default_of(getattr(importlib.import_module(module), attr), self.name)

    def __str__(self) -> str:  # what ``%(default)s`` shows in --help
        value = self.value
        items = value if isinstance(value, (tuple, list)) else [value]
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in items)

    def __repr__(self) -> str:
        return f"Default({self.owner!r}, {self.name!r})"


def default_of(owner: Any, name: str) -> Any:
    """Default of a pydantic field, a dataclass field or a function's keyword."""
    if isinstance(owner, type) and issubclass(owner, BaseModel):
        return owner.model_fields[name].get_default(call_default_factory=True)
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        return field.default
    default = inspect.signature(owner).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__qualname__}() has no default for {name!r}")
    return default


def value(option: Any) -> Any:
    """An option's value, given or default."""
    return option.value if isinstance(option, Default) else option


def given(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """``{field: args.<attr>}`` for every ``field=attr`` the user gave on the command line."""
    out = {}
    for field, attr in fields.items():
        option = getattr(args, attr)
        if not isinstance(option, Default):
            out[field] = tuple(option) if isinstance(option, list) else option
    return out


def build(cls: type[T], args: argparse.Namespace, fields: dict[str, str], **fixed: Any) -> T:
    """``cls(**fixed, **given(args, **fields))``; a refused value is a one-line ValueError
    naming the field and the option it came from."""
    try:
        return cls(**fixed, **given(args, **fields))
    except ValidationError as exc:
        flags = {field: "--" + attr.replace("_", "-") for field, attr in fields.items()}
        raise ValueError(describe(exc, flags)) from exc


def describe(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """One line naming each refused field of a settings object, its rule and the value;
    with ``flags`` (field -> command-line option) the option too."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        name = ".".join([exc.title, *loc])
        if loc and flags and loc[0] in flags:
            name += f" ({flags[loc[0]]})"
        message = error["msg"].removeprefix("Value error, ")
        got = "" if error["type"] == "value_error" else f" (got {error.get('input')!r})"
        problems.append(f"{name}: {message}{got}")
    return "; ".join(problems)


def add_settings_options(p: argparse.ArgumentParser) -> None:
    """Microscope options shared by train / simulate / camera / calibrate."""
    g = p.add_argument_group("microscope (defaults: paper Tables 2-3)")
    add_geometry_options(g, planes="focal planes (2-8, default %(default)s)")
    g.add_argument(
        "--psf",
        type=Path,
        default=None,
        help="PSF: a JSON of PSFParams fields (the Gaussian, e.g. from `voxloc calibrate "
        "psf`) or a spline PSF file (.npz, `voxloc calibrate psf`); `voxloc simulate` "
        "also takes 'vectorial' (the psfmodels microscope, docs/own-microscope.md)",
    )
    add_camera_options(
        g, help="noise model: paper (Table 3) or a real camera (default %(default)s)"
    )
    g.add_argument(
        "--drift-max-nm",
        type=float,
        default=Default("engines.config:SimSettings", "drift_max_nm"),
        help="max per-plane lateral drift vs plane 0, nm (default %(default)s)",
    )
    g.add_argument(
        "--weight",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="molecule brightness, a fraction of a', drawn uniformly in LO..HI (default "
        "0.3 1.0; e.g. 0.65 0.65: one brightness, a label of constant photon count)",
    )


def add_geometry_options(
    g: argparse._ActionsContainer,
    *,
    planes: str = "cameras/planes (default %(default)s)",
    dz_nm: str = "plane spacing, nm (default %(default)s)",
) -> None:
    geometry = "engines.config:Geometry"
    g.add_argument("--planes", type=int, default=Default(geometry, "planes"), help=planes)
    g.add_argument(
        "--px-nm",
        type=float,
        default=Default(geometry, "px_nm"),
        help="pixel size, nm (default %(default)s)",
    )
    g.add_argument("--dz-nm", type=float, default=Default(geometry, "dz_nm"), help=dz_nm)


def camera_mode(value: str) -> str:
    """``--camera``: a mode of the camera registry (imported only when the flag is given)."""
    from engines.cameras import camera_modes

    if value not in camera_modes():
        raise argparse.ArgumentTypeError(
            f"unknown camera {value!r}, expected one of {', '.join(camera_modes())}"
        )
    return value


def add_camera_options(g: argparse._ActionsContainer, *, help: str) -> None:
    g.add_argument(
        "--camera",
        type=camera_mode,
        metavar="{" + "|".join(("paper", "emccd", "scmos")) + ",...}",
        default=Default("engines.config:NoiseParams", "mode"),
        help=help,
    )
    g.add_argument(
        "--camera-json",
        type=Path,
        default=None,
        help="NoiseParams JSON (gain, baseline, read noise, ...)",
    )


def add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="arithmetic of the network (default: the backend's; auto uses bf16 on "
        "CPUs with native bfloat16, fp32 elsewhere). fp16 needs a GPU",
    )


def settings_from_args(args: argparse.Namespace, base: SimSettings | None = None) -> SimSettings:
    """``base`` (default: the paper's settings) with the microscope options the user gave."""
    base = base or SimSettings()
    geom = base.geometry.model_dump()
    geom.update(_given_if_present(args, planes="planes", px_nm="px_nm", dz_nm="dz_nm"))
    psf = base.psf.model_dump()
    if getattr(args, "psf", None) and Path(args.psf).suffix == ".npz":
        from engines.psf_model import spline_ref

        psf["spline"] = spline_ref(args.psf).model_dump()
    elif getattr(args, "psf", None):
        psf.update(_read_json(args.psf, "psf"))
    noise = base.noise.model_dump()
    if getattr(args, "camera_json", None):
        noise.update(_read_json(args.camera_json, "camera"))
    noise.update(_given_if_present(args, mode="camera"))
    drift = _given_if_present(args, drift_max_nm="drift_max_nm").get(
        "drift_max_nm", base.drift_max_nm
    )
    weight = getattr(args, "weight", None) or (base.weight_min, base.weight_max)
    return SimSettings(
        geometry=Geometry(**geom),
        psf=PSFParams(**psf),
        noise=NoiseParams(**noise),
        drift_max_nm=drift,
        weight_min=weight[0],
        weight_max=weight[1],
        margin_px=base.margin_px,
    )


def _given_if_present(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """:func:`given` for options a command may not have; ``None`` counts as not given."""
    present = {f: a for f, a in fields.items() if getattr(args, a, None) is not None}
    return given(args, **present)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} settings {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"{what} settings {path}: expected a JSON object, got {type(data).__name__}"
        )
    return data.get(what, data) if what == "psf" else data
