"""App factory: routes, token and Prometheus endpoint (``voxloc serve`` adds the dashboard)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi

from service.api import acquisitions, routes
from service.api.errors import BodyGuard, validation_error
from service.pipeline import Pipeline


def create_app(
    pipeline: Pipeline, *, token: str | None = None, instance: str | None = None
) -> FastAPI:
    """FastAPI app over ``pipeline`` (started or not).

    Args:
        token: bearer token for mutating endpoints; default ``pipeline.settings.api.token``
            (empty: no auth).
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
    app.include_router(acquisitions.router)
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
