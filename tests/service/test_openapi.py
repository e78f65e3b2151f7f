"""The OpenAPI spec describes every answer (docs/protocol.md Sec. 5), and the typed
answers keep the JSON bodies the pipeline produces."""

from __future__ import annotations

from typing import Any

import zmq
from fastapi.testclient import TestClient

from clients.dashboard import include_dashboard
from service.api import create_app
from service.pipeline import Pipeline
from service.settings import ServiceSettings


def with_dashboard(app: Any, pipeline: Any) -> Any:
    """``app`` with the dashboard mounted, as ``voxloc serve`` does."""
    from clients.dashboard import include_dashboard

    include_dashboard(app, pipeline)
    return app


JSON = "application/json"
DOCUMENTED = {
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/models"),
    ("post", "/models/{name}/load"),
    ("get", "/config"),
    ("put", "/config"),
    ("get", "/registration"),
    ("put", "/registration"),
    ("get", "/stats"),
    ("get", "/metrics"),
}
DASHBOARD = {
    ("get", "/dashboard/info"),
    ("get", "/dashboard/image.png"),
    ("post", "/dashboard/reset"),
    ("put", "/dashboard/render"),
    ("get", "/dashboard/events"),
}


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {(method, path): op for path, ops in spec["paths"].items() for method, op in ops.items()}


def test_every_answer_has_a_schema_and_json_ones_name_their_keys(service: Any) -> None:
    app = create_app(service.pipeline)
    include_dashboard(app, service.pipeline)  # as `voxloc serve` does
    spec = app.openapi()
    ops = _operations(spec)
    assert DOCUMENTED | DASHBOARD <= set(ops)
    for (method, path), op in ops.items():
        where = f"{method.upper()} {path}"
        ok = [code for code in op["responses"] if code.startswith("2")]
        assert ok, f"{where}: no success answer"
        for code, answer in op["responses"].items():
            content = answer.get("content")
            assert content, f"{where} {code}: no content type"
            for media, body in content.items():
                schema = _resolve(spec, body.get("schema", {}))
                assert schema, f"{where} {code} {media}: empty schema"
                if media == JSON and code in ok:
                    assert schema.get("properties"), f"{where} {code}: keys not named: {schema}"


def test_error_answers_are_documented(service: Any) -> None:
    ops = _operations(service.client.get("/openapi.json").json())
    assert "503" in ops[("get", "/health/ready")]["responses"]
    assert {"401", "404", "409", "422"} <= set(ops[("post", "/models/{name}/load")]["responses"])
    for route in (("put", "/config"), ("put", "/registration")):
        assert {"401", "422"} <= set(ops[route]["responses"])
    assert "text/plain" in next(iter(ops[("get", "/metrics")]["responses"]["200"]["content"]))


def _keys(value: Any) -> Any:
    """The key tree of a JSON value (lists by their first item)."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return type(value).__name__ if value is None else "value"


def test_stats_answer_is_the_pipeline_snapshot(service: Any) -> None:
    body = service.client.get("/stats").json()
    assert _keys(body) == _keys(service.pipeline.snapshot())
    assert list(body) == list(service.pipeline.snapshot())


def test_answers_of_a_pipeline_not_started() -> None:
    settings = ServiceSettings(inference={"model": "tiny", "drop_policy": "block"})
    ctx = zmq.Context()
    pipeline = Pipeline(settings, context=ctx)
    try:
        with TestClient(create_app(pipeline)) as client:
            body = client.get("/stats").json()
            assert _keys(body) == _keys(pipeline.snapshot())
            assert "endpoint" not in body["cameras"]["cam0"] and body["model"] is None
            live = client.get("/health/live").json()
            assert (live["status"], live["state"], len(live["instance"])) == ("live", "created", 32)
            assert client.get("/health/ready").status_code == 503
            assert client.get("/models").json()["active"] is None
            assert client.get("/config").json()["drop_policy"] == "block"
    finally:
        ctx.term()


def test_every_route_documents_its_errors_in_one_format(service: Any) -> None:
    """Mutating routes document the guard's answers; routes taking input the refusal
    (as ``ErrorAnswer``, the one error body, never FastAPI's list of errors)."""
    spec = with_dashboard(create_app(service.pipeline), service.pipeline).openapi()
    for (method, path), op in _operations(spec).items():
        codes = set(op["responses"])
        if method in ("post", "put", "patch", "delete"):
            assert {"401", "403", "413", "415"} <= codes, f"{method} {path}: {codes}"
        if "requestBody" in op:
            assert {"400", "422"} <= codes, f"{method} {path}: {codes}"
        if op.get("parameters"):
            assert "422" in codes, f"{method} {path}: {codes}"
        for code, answer in op["responses"].items():
            if code.startswith("4"):
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorAnswer"}, (path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_no_token_no_security_requirement(service: Any) -> None:
    with_token = create_app(service.pipeline, token="t").openapi()
    without = create_app(service.pipeline, token="").openapi()
    assert with_token["paths"]["/config"]["put"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in without["paths"]["/config"]["put"]
