"""Every state-changing endpoint is guarded (issue 14, item 5): the token when one is
configured; without one, requests a web page of another origin could make are refused."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.api import create_app
from service.api.auth import require_token


def with_dashboard(app: Any, pipeline: Any) -> Any:
    """``app`` with the dashboard mounted, as ``voxloc serve`` does."""
    from clients.dashboard import include_dashboard

    include_dashboard(app, pipeline)
    return app


OWN = "http://127.0.0.1:8750"
MUTATING_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _depends_on(route: APIRoute, fn: Any) -> bool:
    stack = [route.dependant]
    while stack:
        dep = stack.pop()
        if dep.call is fn:
            return True
        stack.extend(dep.dependencies)
    return False


def _api_routes(routes: list) -> list[APIRoute]:
    """Every APIRoute, also those of included routers (FastAPI keeps them apart)."""
    out: list[APIRoute] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            out += _api_routes(included.routes)
        elif isinstance(route, APIRoute):
            out.append(route)
    return out


def test_every_state_changing_route_declares_the_guard(service: Any) -> None:
    pytest.importorskip("clients.dashboard", reason="clients.dashboard not installed")
    app = with_dashboard(create_app(service.pipeline), service.pipeline)
    routes = [r for r in _api_routes(app.routes) if r.methods & MUTATING_METHODS]
    assert {r.path for r in routes} >= {
        "/models/{name}/load",
        "/config",
        "/registration",
        "/dashboard/reset",
    }
    for route in routes:
        assert _depends_on(route, require_token), f"{route.methods} {route.path} is unguarded"
        op = app.openapi()["paths"][route.path][next(iter(route.methods)).lower()]
        assert {"401", "403", "415"} <= set(op["responses"]), route.path


@pytest.fixture
def loopback(service: Any) -> TestClient:
    """The app with no token, as a browser on this machine reaches it."""
    app = create_app(service.pipeline, token="")
    return TestClient(app, base_url=OWN, raise_server_exceptions=False)


def test_own_origin_and_non_browser_clients_may_change_it(loopback: TestClient) -> None:
    assert loopback.put("/config", json={"threshold": 0.6}).status_code == 200
    same = {"Origin": OWN, "Sec-Fetch-Site": "same-origin"}
    assert loopback.put("/config", json={"threshold": 0.65}, headers=same).status_code == 200
    assert loopback.post("/models/tiny2/load", headers={"Origin": OWN}).status_code == 200
    localhost = TestClient(loopback.app, base_url="http://localhost:8750")
    r = localhost.put(
        "/config", json={"threshold": 0.66}, headers={"Origin": "http://localhost:8750"}
    )
    assert r.status_code == 200
    assert loopback.get("/config").json()["threshold"] == 0.66


@pytest.mark.parametrize(
    ("headers", "code", "needle"),
    [
        ({"Origin": "http://evil.example"}, 403, "evil.example"),
        ({"Origin": "http://127.0.0.1:9999"}, 403, "Origin"),  # another port: another origin
        ({"Origin": "null"}, 403, "Origin"),  # sandboxed frame, file:// page
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "application/json"),
    ],
)
def test_what_a_foreign_page_can_send_is_refused(
    loopback: TestClient, headers: dict, code: int, needle: str
) -> None:
    body = b'{"threshold": 0.9}'
    r = loopback.put(
        "/config", content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert r.status_code == code and needle in r.json()["detail"], r.text
    r = loopback.post("/models/tiny2/load", headers=headers)
    assert r.status_code == code, r.text
    assert loopback.get("/config").json()["threshold"] == 0.7
    assert loopback.get("/models").json()["active"]["name"] == "tiny"


def test_a_dns_rebound_page_is_refused(service: Any) -> None:
    """evil.example resolving to 127.0.0.1: Origin and Host agree, on a foreign name."""
    app = create_app(service.pipeline, token="")
    rebound = TestClient(app, base_url="http://evil.example:8750")
    r = rebound.put(
        "/config", json={"threshold": 0.9}, headers={"Origin": "http://evil.example:8750"}
    )
    assert r.status_code == 403


def test_allowed_origins_widen_the_own_origin(service: Any) -> None:
    app = create_app(service.pipeline, token="")
    app.state.allowed_origins = ["http://scope-pc:8750"]
    client = TestClient(app, base_url=OWN)
    r = client.put("/config", json={"threshold": 0.6}, headers={"Origin": "http://scope-pc:8750"})
    assert r.status_code == 200


def test_with_a_token_every_route_needs_it_whatever_the_origin(service: Any) -> None:
    pytest.importorskip("clients.dashboard", reason="clients.dashboard not installed")
    app = with_dashboard(create_app(service.pipeline, token="s3cret"), service.pipeline)
    good = {"Authorization": "Bearer s3cret", "Origin": "http://elsewhere:1"}
    with TestClient(app, base_url=OWN) as client:
        assert client.post("/dashboard/reset").status_code == 401
        assert client.post("/dashboard/reset", headers={"Origin": OWN}).status_code == 401
        assert client.post("/dashboard/reset", headers=good).status_code == 200
        assert client.put("/config", json={"threshold": 0.6}, headers=good).status_code == 200


def test_dashboard_reset_from_another_origin_is_refused(service: Any) -> None:
    pytest.importorskip("clients.dashboard", reason="clients.dashboard not installed")
    app = with_dashboard(create_app(service.pipeline, token=""), service.pipeline)
    with TestClient(app, base_url=OWN) as client:
        assert (
            client.post("/dashboard/reset", headers={"Origin": "http://x.example"}).status_code
            == 403
        )
        assert client.post("/dashboard/reset", headers={"Origin": OWN}).status_code == 200
