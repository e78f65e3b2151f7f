"""App factory: routes, token, Prometheus endpoint and (when installed) the dashboard."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi

from service.api import routes
from service.api.errors import BodyGuard, validation_error
from service.pipeline import Pipeline

log = logging.getLogger(__name__)


def create_app(
    pipeline: Pipeline,
    *,
    token: str | None = None,
    dashboard: bool = True,
    instance: str | None = None,
) -> FastAPI:
    """FastAPI app over ``pipeline`` (started or not).

    Args:
        token: bearer token for mutating endpoints; default ``pipeline.settings.api.token``
            (empty: no auth).
        dashboard: include ``clients.dashboard.create_router(...)`` at ``/`` if importable.
        instance: the id ``GET /health/live`` reports (default: a new random one), so that
            a client that started this service can tell it from another on the same port.
    """
    app = FastAPI(
        title="voxloc service",
        version="1",
        description="Control plane of the live voxloc localization service (docs/protocol.md).",
    )
    app.state.pipeline = pipeline
    app.state.token = pipeline.settings.api.token if token is None else token
    app.state.instance = instance or uuid.uuid4().hex
    app.state.host = pipeline.settings.api.host
    app.state.allowed_origins = list(pipeline.settings.api.allowed_origins)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyGuard)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(routes.router)
    if dashboard:
        _include_dashboard(app, pipeline)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec, true to this service: with no token configured, no operation
    requires one (the bearer scheme stays documented, for a service that has one)."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        if not app.state.token:
            for ops in spec.get("paths", {}).values():
                for op in ops.values():
                    if isinstance(op, dict):
                        op.pop("security", None)
        app.openapi_schema = spec
    return app.openapi_schema


def _include_dashboard(app: FastAPI, pipeline: Pipeline) -> None:
    try:
        from clients.dashboard import create_router
    except ImportError as exc:
        log.debug("no dashboard: %s", exc)
        return
    endpoint = pipeline.publish_endpoint or pipeline.settings.stream.publish
    stream = pipeline.settings.stream
    kwargs: dict[str, Any] = {}
    if pipeline.curve is not None:  # the dashboard subscribes with keys of its own
        kwargs["curve"] = pipeline.curve.client_keys()
    if pipeline.models.active is not None:
        g = pipeline.models.active.engine.info.settings.geometry
        kwargs["extent_nm"] = (stream.width * g.px_nm, stream.height * g.px_nm)
        kwargs["z_range_nm"] = (0.0, stream.planes * g.dz_nm)
    try:
        app.include_router(create_router(locs_endpoint=endpoint, **kwargs))
    except Exception:  # the dashboard is optional: never keep the service from starting
        log.exception("dashboard router could not be included")
