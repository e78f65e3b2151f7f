"""``voxloc serve``: the live pipeline plus its control plane, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.api import create_app
    from service.pipeline import Pipeline
    from service.settings import load_settings

    settings = load_settings(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(
            update={
                "api": type(settings.api).model_validate({**settings.api.model_dump(), **overrides})
            }
        )
    if args.model:
        settings = settings.model_copy(
            update={"inference": settings.inference.model_copy(update={"model": args.model})}
        )
    pipeline = Pipeline(settings)
    pipeline.start()
    try:
        app = create_app(pipeline)
        config = uvicorn.Config(
            app, host=settings.api.host, port=settings.api.port, log_level="info", access_log=False
        )
        server = _make_server(config)
        with _stop_on_signals(server):
            server.run()
    finally:
        pipeline.stop()
    return 0


def _make_server(config: object) -> object:
    """uvicorn's server without its own signal capture: uvicorn re-raises the signal after
    its shutdown, which would end the process before the pipeline stops."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


@contextlib.contextmanager
def _stop_on_signals(server: object) -> Iterator[None]:
    """SIGINT/SIGTERM ask the server to exit; a second SIGINT forces it."""

    def handle(sig: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(sig).name)
        if getattr(server, "should_exit", False) and sig == signal.SIGINT:
            server.force_exit = True  # type: ignore[attr-defined]
        server.should_exit = True  # type: ignore[attr-defined]

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the live localization service",
        description="Receive camera frames over ZeroMQ, register, batch and localize them, "
        "publish localizations, and serve the HTTP control plane (docs/protocol.md). "
        "Settings: TOML file plus VOXLOC_<SECTION>__<KEY> environment variables.",
    )
    p.add_argument("--config", type=Path, default=None, help="settings TOML (voxloc.toml)")
    p.add_argument("--host", default=None, help="control-plane host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="control-plane port (default 8750)")
    p.add_argument("--model", default=None, help="model to start with (name or directory)")
    p.set_defaults(func=_cmd_serve)
