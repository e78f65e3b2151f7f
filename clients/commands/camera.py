"""``voxloc camera``: simulated or replayed cameras pushing frames to the service."""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from clients.commands.keys import add_curve_options, curve_keys
from clients.commands.options import (
    Default,
    add_settings_options,
    build,
    given,
    settings_from_args,
    value,
)
from clients.commands.signals import stop_on_signals
from engines.config import Geometry

if TYPE_CHECKING:
    from clients.camera import SimulatedSource, TiffSource
    from clients.scene import Scene

log = logging.getLogger(__name__)

SCENE = "clients.scene:SceneConfig"
MISALIGN = "clients.scene:Misalignment"
ENDPOINT = "clients.camera:default_endpoint"
PUBLISHER = "clients.camera:CameraPublisher"


def build_scene(args: argparse.Namespace) -> Scene:
    from clients.scene import Misalignment, Scene, SceneConfig

    settings = settings_from_args(args)
    settings = settings.model_copy(
        update={"geometry": settings.geometry.with_size(args.height, args.width)}
    )
    misalign = (
        None
        if args.no_misalign
        else Misalignment(
            **given(
                args,
                max_shift_px="misalign_px",
                max_rotation_deg="misalign_deg",
                max_scale="misalign_scale",
            )
        )
    )
    fields = dict(
        molecules="molecules",
        structure="structure",
        filaments="filaments",
        stage_drift_nm_per_frame="stage_drift_nm",
        seed="seed",
    )
    return Scene(build(SceneConfig, args, fields, settings=settings, misalign=misalign))


def _simulated_source(args: argparse.Namespace, planes: list[int]) -> SimulatedSource:
    from clients.camera import SimulatedSource
    from engines.io.atomic import write_json

    scene = build_scene(args)
    names = [f"{args.name_prefix}{k}" for k in range(scene.planes)]
    reg = {n: {"affine": a} for n, a in zip(names, scene.registration(), strict=True)}
    if args.registration_out:  # the body PUT /registration takes
        write_json(args.registration_out, {"cameras": reg})
    if args.register:
        _register_service(args.register, args.token, reg, args.wait_ready, args.instance)
    return SimulatedSource(scene, planes, start=args.start_frame, frames=args.frames)


def _register_service(
    url: str, token: str | None, cams: dict, wait_s: float, instance: str | None = None
) -> None:
    from clients.control import ControlClient, ControlError

    with ControlClient(url, token=token) as ctl:
        if wait_s > 0:
            ctl.wait_ready(wait_s, instance=instance)
        elif not ctl.is_instance(instance):
            raise ControlError(f"the service at {url} is not instance {instance}")
        ctl.set_registration(cams)
    log.info("registration of %d cameras set on %s", len(cams), url)


def _cmd_camera(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the scene is tiny; leave the cores to the service
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    from clients.camera import TiffSource, default_endpoint

    if args.tiff:
        planes = args.plane or list(range(len(args.tiff)))
        if len(args.tiff) != len(planes):
            raise ValueError(
                f"got {len(args.tiff)} TIFF stacks for planes {planes}: give one "
                "stack per camera, in plane order"
            )
    else:
        planes = args.plane or list(range(value(args.planes)))
    names = {k: f"{args.name_prefix}{k}" for k in planes}
    if args.endpoint and len(args.endpoint) != len(planes):
        raise ValueError(f"got {len(args.endpoint)} --endpoint values for planes {planes}")
    endpoints = args.endpoint or [
        default_endpoint(k, **given(args, host="host", base_port="base_port")) for k in planes
    ]
    if args.tiff:
        tiffs = TiffSource(
            args.tiff, planes, start=args.start_frame, frames=args.frames, loop=args.loop
        )
        with contextlib.closing(tiffs):
            return _publish(args, tiffs, planes, names, endpoints)
    return _publish(args, _simulated_source(args, planes), planes, names, endpoints)


def _publish(
    args: argparse.Namespace,
    source: TiffSource | SimulatedSource,
    planes: list[int],
    names: dict[int, str],
    endpoints: list[str],
) -> int:
    """Send the frame sets of ``source`` at ``--rate`` until it ends or a stop signal."""
    from clients.camera import CameraPublisher, run_cameras

    curve = curve_keys(args)
    pubs = {
        k: CameraPublisher(
            ep,
            names[k],
            k,
            acquisition=args.acquisition,
            curve=curve,
            **given(args, sndhwm="sndhwm"),
        )
        for k, ep in zip(planes, endpoints, strict=True)
    }
    stop = threading.Event()
    print(
        f"cameras {[names[k] for k in planes]} -> {endpoints} at {args.rate:g} Hz (Ctrl-C to stop)",
        flush=True,
    )
    try:
        with stop_on_signals(stop):
            sent = run_cameras(source, pubs, args.rate, stop)
    finally:
        for pub in pubs.values():
            pub.close()
    dropped = {pubs[k].camera: pubs[k].stats.dropped_total for k in planes}
    print(
        f"sent {sent} frame sets; published "
        f"{[p.stats.published for p in pubs.values()]}, dropped {dropped}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "camera",
        help="run simulated (or replayed) cameras that push frames to the service",
        description="Push camera frames to a running `voxloc serve`: one or all cameras of a "
        "simulated quad-plane microscope (density, rate, per-camera misalignment and drift, "
        "filament structure as in the paper's Fig. 11), or per-camera TIFF stacks replayed "
        "at a rate. Each camera connects a PUSH socket to its service endpoint.",
    )
    g = p.add_argument_group("cameras and endpoints")
    g.add_argument(
        "--plane",
        type=int,
        action="append",
        default=None,
        metavar="K",
        help="run only camera K (repeat for several; default all)",
    )
    g.add_argument(
        "--endpoint",
        action="append",
        default=None,
        help="endpoint per selected camera, in order (default tcp://HOST:BASE_PORT+K)",
    )
    g.add_argument(
        "--host", default=Default(ENDPOINT, "host"), help="service host (default %(default)s)"
    )
    g.add_argument(
        "--base-port",
        type=int,
        default=Default(ENDPOINT, "base_port"),
        help="port of cam0 (default %(default)s)",
    )
    g.add_argument("--name-prefix", default="cam", help="camera names PREFIX0.. (default cam)")
    g.add_argument("--rate", type=float, default=20.0, help="frame sets per second (0: max)")
    g.add_argument("--frames", type=int, default=None, help="stop after N frame sets")
    g.add_argument(
        "--acquisition",
        default=None,
        help="start a new acquisition of this name in the service (frame indices from 0; "
        "default: frames belong to the service's current acquisition)",
    )
    g.add_argument(
        "--start-frame",
        type=int,
        default=0,
        help="first frame index (continue an acquisition after a restart)",
    )
    g.add_argument(
        "--sndhwm",
        type=int,
        default=Default(PUBLISHER, "sndhwm"),
        help="send queue per camera, frames (default %(default)s)",
    )
    s = p.add_argument_group("simulation")
    s.add_argument(
        "--molecules",
        type=int,
        default=Default(SCENE, "molecules"),
        help="blinking molecules per frame (default %(default)s)",
    )
    s.add_argument(
        "--structure", choices=["filaments", "uniform"], default=Default(SCENE, "structure")
    )
    s.add_argument(
        "--filaments", type=int, default=Default(SCENE, "filaments"), help="number of filaments"
    )
    s.add_argument("--height", type=int, default=Geometry().height, help="frame height, px")
    s.add_argument("--width", type=int, default=Geometry().width, help="frame width, px")
    s.add_argument(
        "--misalign-px",
        type=float,
        default=Default(MISALIGN, "max_shift_px"),
        help="max camera shift, px (default %(default)s)",
    )
    s.add_argument(
        "--misalign-deg",
        type=float,
        default=Default(MISALIGN, "max_rotation_deg"),
        help="max camera rotation, deg (default %(default)s)",
    )
    s.add_argument(
        "--misalign-scale",
        type=float,
        default=Default(MISALIGN, "max_scale"),
        help="max scale error (default %(default)s)",
    )
    s.add_argument("--no-misalign", action="store_true", help="cameras perfectly aligned")
    s.add_argument(
        "--stage-drift-nm",
        type=float,
        nargs=2,
        default=Default(SCENE, "stage_drift_nm_per_frame"),
        metavar=("X", "Y"),
        help="sample drift per frame, nm",
    )
    s.add_argument("--seed", type=int, default=Default(SCENE, "seed"))
    s.add_argument(
        "--registration-out",
        type=Path,
        default=None,
        help="write the registration that undoes the misalignment (JSON)",
    )
    s.add_argument(
        "--register",
        metavar="URL",
        default=None,
        help="PUT that registration to the service at URL before streaming",
    )
    s.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="S",
        help="with --register: first wait up to S seconds for the service to be "
        "ready (model loaded)",
    )
    s.add_argument("--token", default=None, help="API token for --register (default $VOXLOC_TOKEN)")
    s.add_argument(
        "--instance",
        default=None,
        metavar="ID",
        help="with --register: only the service reporting this instance id in "
        "/health/live (voxloc serve --instance-id) is registered",
    )
    add_settings_options(p)
    add_curve_options(p)
    r = p.add_argument_group("replay")
    r.add_argument(
        "--tiff",
        type=Path,
        nargs="+",
        default=None,
        help="one single-camera TIFF stack per plane, in plane order",
    )
    r.add_argument("--loop", action="store_true", help="replay the stacks forever")
    p.set_defaults(func=_cmd_camera)
