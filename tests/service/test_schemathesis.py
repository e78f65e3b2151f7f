"""schemathesis over the OpenAPI spec of the real app (issue 14, item 7), with and without
a token: no 5xx, every answer's status, content type, headers and body as documented, and
requests that break the schema refused.

A bounded number of examples per operation (``VOXLOC_SCHEMATHESIS_EXAMPLES``, default 25)
keeps it under a minute on the CI machine; ``benchmarks/`` is not needed for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402 (after the skip)
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402

from service.api import create_app  # noqa: E402

EXAMPLES = int(os.environ.get("VOXLOC_SCHEMATHESIS_EXAMPLES", "25"))
TOKEN = "s3cret-token"
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
]
# streams for ever; its content type and first event are tested in tests/clients
ENDLESS = {("GET", "/dashboard/events")}


@pytest.fixture(params=["", TOKEN], ids=["no-token", "token"])
def app(
    service: Any,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """The real app, with or without a token, the dashboard router included the way the
    serve command does; in a scratch folder (server-side recordings land below it)."""
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("clients.dashboard", reason="clients.dashboard not installed")
    from clients.dashboard import create_router

    app = create_app(service.pipeline, token=request.param, dashboard=False)
    router = create_router(locs_endpoint=service.pipeline.publish_endpoint or "")
    app.include_router(router)
    router.live.start()  # type: ignore[attr-defined]
    yield app
    router.live.stop()  # type: ignore[attr-defined]


def _operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if (op.method.upper(), op.path) not in ENDLESS]


def _fuzz(op: Any, mode: Any, headers: dict[str, str]) -> int:
    seen: list[int] = []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        seen.append(response.status_code)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:  # nothing to break: no parameters, no body
            return 0
        raise
    assert not [code for code in seen if code >= 500], f"{op.method} {op.path}: {seen}"
    return len(seen)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(app: Any, service: Any) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if app.state.token else {}
    calls = 0
    for op in _operations(app):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += _fuzz(op, mode, headers)
    assert calls > 50
    assert service.pipeline.ready  # fuzzing left the pipeline serving
