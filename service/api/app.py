"""App factory: routes, token and Prometheus endpoint (``voxloc serve`` adds the dashboard)."""

from __future__ import annotations

from fastapi import FastAPI

from service.api import acquisitions, routes
from service.pipeline import Pipeline


def create_app(pipeline: Pipeline, *, token: str | None = None) -> FastAPI:
    """FastAPI app over ``pipeline`` (started or not).

    Args:
        token: bearer token for mutating endpoints; default ``pipeline.settings.api.token``
            (empty: no auth).
    """
    app = FastAPI(
        title="voxloc service",
        version="1",
        description="Control plane of the live voxloc localization service (docs/protocol.md).",
    )
    app.state.pipeline = pipeline
    app.state.token = pipeline.settings.api.token if token is None else token
    app.include_router(routes.router)
    app.include_router(acquisitions.router)
    return app
