"""``voxloc serve``: the live pipeline plus its control plane, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clients.commands.options import Default
from clients.commands.signals import on_stop_signals

if TYPE_CHECKING:
    from service.settings import ServiceSettings

API = "service.settings:ApiSettings"


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.preflight import check_endpoints
    from service.settings import load_settings

    settings = _with_overrides(load_settings(args.config), args)
    # before the model loads or a socket opens: a busy port is one line, at once
    check_endpoints(settings)

    from clients.dashboard import include_dashboard
    from service.api import create_app
    from service.pipeline import Pipeline
    from service.server import Server

    pipeline = Pipeline(settings)
    pipeline.start()
    try:
        app = create_app(pipeline, instance=args.instance_id)
        include_dashboard(app, pipeline)
        server = Server(app, host=settings.api.host, port=settings.api.port)
        with on_stop_signals(server.request_stop):
            server.run()
    finally:
        pipeline.stop()
    return 0


def _with_overrides(settings: ServiceSettings, args: argparse.Namespace) -> ServiceSettings:
    """The settings file (and environment) with the command-line options on top."""
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port))
        if v is not None and not isinstance(v, Default)
    }
    if overrides:
        api = type(settings.api).model_validate({**settings.api.model_dump(), **overrides})
        settings = settings.model_copy(update={"api": api})
    if args.model:
        inference = settings.inference.model_copy(update={"model": args.model})
        settings = settings.model_copy(update={"inference": inference})
    return settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the live localization service",
        description="Receive camera frames over ZeroMQ, register, batch and localize them, "
        "publish localizations, and serve the HTTP control plane (docs/protocol.md). "
        "Settings: TOML file plus VOXLOC_<SECTION>__<KEY> environment variables.",
    )
    p.add_argument("--config", type=Path, default=None, help="settings TOML (voxloc.toml)")
    p.add_argument(
        "--host", default=Default(API, "host"), help="control-plane host (default %(default)s)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=Default(API, "port"),
        help="control-plane port (default %(default)s)",
    )
    p.add_argument("--model", default=None, help="model to start with (name or directory)")
    p.add_argument(
        "--instance-id",
        default=None,
        metavar="ID",
        help="the id GET /health/live reports (default: a random one), so that the process "
        "that started this service can tell it from another on the same port",
    )
    p.set_defaults(func=_cmd_serve)
