"""FastAPI routes of the live dashboard (the page, its assets, the image stream, reset,
the rendering mode)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from clients.dashboard.live import LiveImage, LiveState
from clients.render import RenderMode, RenderSettings
from service.api.auth import MUTATING_ERRORS, mutating
from service.api.schemas import ErrorAnswer
from service.curve import CurveClientKeys

if TYPE_CHECKING:
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
HEARTBEAT_S = 10.0
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "the body could not be read (not UTF-8 JSON)"},
    422: {"model": ErrorAnswer, "description": "not a rendering mode; the detail says which"},
}


class DashboardInfo(BaseModel):
    """Scale, depth range and colour bar of the live image."""

    model_config = ConfigDict(extra="forbid")

    nm_per_px: float
    z_min_nm: float
    z_max_nm: float
    colorbar: list[str] = Field(description="CSS colours from z_min_nm to z_max_nm")
    endpoint: str = Field(description="the localization stream the dashboard subscribes to")
    state: LiveState
    mode: RenderMode = Field(description="how the image is rendered now")
    modes: list[str] = Field(description="the rendering modes to choose from")
    sigma_nm: float = Field(
        description="blur of gauss mode, and of localizations without a precision"
    )


class DashboardRender(BaseModel):
    """The image's rendering: ``hist`` (counts per pixel), ``gauss`` (blurred by
    ``sigma_nm``) or ``precision`` (each localization a Gaussian of its own lateral
    precision; ``sigma_nm`` where it has none)."""

    model_config = ConfigDict(extra="forbid")

    mode: RenderMode


class DashboardReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reset: bool
    version: int = Field(description="version of the (now blank) image")


class PNGResponse(Response):
    media_type = "image/png"


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


class DashboardRouter(APIRouter):
    """The dashboard's routes and the live image they serve (for tests and embedding apps)."""

    def __init__(self, live: LiveImage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.live = live


def create_router(
    locs_endpoint: str,
    *,
    nm_per_px: float = 24.0,
    extent_nm: tuple[float, float] = (64 * 192.0, 64 * 192.0),
    z_range_nm: tuple[float, float] = (0.0, 1600.0),
    mode: RenderMode = "precision",
    sigma_nm: float = 20.0,
    interval_s: float = 0.5,
    curve: CurveClientKeys | None = None,
) -> DashboardRouter:
    """The dashboard as an ``APIRouter`` to include at ``/``.

    Args:
        locs_endpoint: the service's localization stream (its XPUB endpoint; a bind
            address such as ``tcp://*:5560`` is connected to on 127.0.0.1).
        nm_per_px: lateral scale of the live image (24 nm as in Fig. 11b).
        extent_nm: (width, height) initially covered from (0, 0); grows when
            localizations land beyond it.
        z_range_nm: depth range of the colour map.
        mode: ``hist`` (2D histogram), ``gauss`` (Gaussian-blurred, ``sigma_nm``) or
            ``precision`` (each localization blurred by its own lateral precision,
            ``sigma_nm`` where it has none); the page can switch at any time.
        interval_s: at most one image update per interval.
        curve: keys to subscribe to a service with CURVE on (``pipeline.curve.client_keys()``).
    """
    live = LiveImage(
        locs_endpoint,
        RenderSettings(nm_per_px=nm_per_px, z_range_nm=z_range_nm, mode=mode, sigma_nm=sigma_nm),
        extent_nm,
        interval_s=interval_s,
        curve=curve,
    )

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        live.start()
        yield
        live.stop()

    router = DashboardRouter(live, lifespan=lifespan, tags=["dashboard"])
    _add_routes(router, live)
    return router


def include_dashboard(app: FastAPI, pipeline: Pipeline) -> None:
    """Mount the dashboard of ``pipeline``'s localization stream on ``app`` at ``/``.

    The image covers the stream's field of view and depth range in the active model's
    geometry (the defaults of :func:`create_router` before a model is loaded).
    """
    endpoint = pipeline.publish_endpoint or pipeline.settings.stream.publish
    stream = pipeline.settings.stream
    active = pipeline.active_model
    # with CURVE on, the dashboard subscribes with a key pair of its own
    curve = pipeline.curve.client_keys() if pipeline.curve is not None else None
    try:
        if active is None:
            router = create_router(endpoint, curve=curve)
        else:
            g = active.engine.info.settings.geometry
            router = create_router(
                endpoint,
                extent_nm=(stream.width * g.px_nm, stream.height * g.px_nm),
                z_range_nm=(0.0, stream.planes * g.dz_nm),
                curve=curve,
            )
        app.include_router(router)
    except Exception:  # the dashboard is optional: never keep the service from starting
        log.exception("dashboard router could not be included")


def _add_routes(router: APIRouter, live: LiveImage) -> None:
    @router.get("/", include_in_schema=False)
    def index() -> FileResponse:
        live.start()
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @router.get("/dashboard/info")
    def info() -> DashboardInfo:
        """Scale, depth range and colour bar of the live image."""
        return DashboardInfo(**live.describe())

    @router.get("/dashboard/image.png", response_class=PNGResponse)
    def image() -> PNGResponse:
        """The latest rendered image (PNG)."""
        import base64

        live.start()
        return PNGResponse(base64.b64decode(live.snapshot.png_b64))

    @router.post("/dashboard/reset", dependencies=mutating, responses=MUTATING_ERRORS)
    def reset() -> DashboardReset:
        """Clear the accumulated image (this dashboard's view only; the service is untouched)."""
        live.reset()
        return DashboardReset(reset=True, version=live.snapshot.version)

    @router.put(
        "/dashboard/render", dependencies=mutating, responses={**MUTATING_ERRORS, **BODY_ERRORS}
    )
    def set_render(body: DashboardRender) -> DashboardRender:
        """Switch the image's rendering (this dashboard's view only); both images are
        accumulated all along, so the switch shows the whole acquisition."""
        live.set_mode(body.mode)
        return DashboardRender(mode=live.settings.mode)

    @router.get("/dashboard/events", response_class=EventStreamResponse)
    async def events(request: Request) -> EventStreamResponse:
        """Server-sent events: one ``image`` event per new rendering (JSON data)."""
        live.start()
        return EventStreamResponse(
            _event_stream(live, request.is_disconnected),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _event_stream(live: LiveImage, disconnected: Callable) -> AsyncIterator[str]:
    sent, idle = -1, 0.0
    poll_s = min(live.interval_s, 0.25)
    while not await disconnected():
        snap = live.snapshot
        if snap.version != sent and snap.png_b64:
            sent, idle = snap.version, 0.0
            data = {
                "version": snap.version,
                "png": snap.png_b64,
                "width": snap.width_px,
                "height": snap.height_px,
                **snap.info,
            }
            yield f"event: image\ndata: {json.dumps(data)}\n\n"
        elif idle >= HEARTBEAT_S:
            idle = 0.0
            yield ": heartbeat\n\n"
        await asyncio.sleep(poll_s)
        idle += poll_s
