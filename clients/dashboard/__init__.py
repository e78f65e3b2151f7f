"""Live web dashboard of the voxloc service.

Factory: ``clients.dashboard.create_router(locs_endpoint=...)`` returns a FastAPI
``APIRouter`` to include at ``/`` (see docs/protocol.md Sec. 6); ``voxloc serve`` mounts it
on the service's app with ``include_dashboard(app, pipeline)``.
It serves the page at ``GET /``, its assets under ``/dashboard/static/``, and
``/dashboard/info``, ``/dashboard/image.png``, ``/dashboard/events`` (server-sent events,
one rendered depth-coloured image per update), ``POST /dashboard/reset``. The page calls
the service's own REST API (``/stats``, ``/config``, ``/models``) from the browser.
Everything is served locally; nothing is fetched from a CDN.
"""

from clients.dashboard.router import create_router, include_dashboard

__all__ = ["create_router", "include_dashboard"]
