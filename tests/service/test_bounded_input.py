"""Bounded input on the control plane (issue 14, item 4): absurd registrations, NaN in
JSON bodies, loose types and oversized bodies are refused with a 4xx naming the field,
never a 500, and the running values stay as they were."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api import create_app
from service.settings import load_settings

JSON = {"content-type": "application/json"}


@pytest.fixture
def client(service: Any) -> TestClient:
    return TestClient(create_app(service.pipeline), raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("cam", "raw", "field", "needle"),
    [
        ({"gain_adu": 1e-320}, None, "gain_adu", "greater than or equal to 0.001"),
        (None, '{"cameras": {"cam1": {"gain_adu": 1e999}}}', "gain_adu", "finite"),
        (None, '{"cameras": {"cam1": {"gain_adu": NaN}}}', "gain_adu", "NaN"),
        (None, '{"cameras": {"cam1": {"baseline_adu": -Infinity}}}', "baseline_adu", "Infinity"),
        ({"gain_adu": 1e5}, None, "gain_adu", "less than or equal to 10000"),
        ({"gain_adu": True}, None, "gain_adu", "valid number"),
        ({"gain_adu": "2"}, None, "gain_adu", "valid number"),
        ({"baseline_adu": -1}, None, "baseline_adu", "greater than or equal to 0"),
        ({"affine": [[1e308, 0, 0], [0, 1e308, 0]]}, None, "affine", "scales pixels"),
        ({"affine": [[1, 0, 0], [0, 1, 1e308]]}, None, "affine", "translation"),
        ({"affine": [[0.01, 0, 0], [0, 0.01, 0]]}, None, "affine", "scales pixels"),
        ({"affine": [[4, 0, 0], [0, 0.3, 0]]}, None, "affine", "ill-conditioned"),
        ({"affine": [[1, 2, 0], [2, 4, 0]]}, None, "affine", "singular"),
        ({"affine": [[1, 0, 500], [0, 1, 0]]}, None, "affine", "more than 2 frames"),
        ({"affine": [[1, 0, 0], [0, 1]]}, None, "affine", "at least 3"),
        ({"affine": [[1, 0, 0]]}, None, "affine", "at least 2"),
    ],
)
def test_absurd_registration_is_refused_naming_the_field(
    client: TestClient, cam: dict | None, raw: str | None, field: str, needle: str
) -> None:
    before = client.get("/registration").json()
    body = raw if raw is not None else json.dumps({"cameras": {"cam1": cam}})
    r = client.put("/registration", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert f"cameras.cam1.{field}" in detail and needle in detail, detail
    assert client.get("/registration").json() == before


def test_a_sane_registration_still_applies(client: TestClient) -> None:
    cam = {"affine": [[1.02, 0.01, -3.5], [-0.01, 0.98, 7.0]], "gain_adu": 2.5}
    r = client.put("/registration", json={"cameras": {"cam3": cam}})
    assert r.status_code == 200, r.text
    assert r.json()["cameras"]["cam3"]["gain_adu"] == 2.5


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ('{"threshold": NaN}', "body.threshold: NaN"),
        ('{"max_delay_ms": Infinity}', "body.max_delay_ms: Infinity"),
        ('{"max_delay_ms": false}', "body.max_delay_ms"),
        ('{"max_batch": 4.0}', "body.max_batch"),
        ('{"threshold": "0.5"}', "body.threshold"),
        ('{"threshold": 0.5', "body"),  # not JSON at all
        ("[1, 2]", "body"),
    ],
)
def test_bad_config_bodies_are_4xx_not_500(client: TestClient, raw: str, needle: str) -> None:
    r = client.put("/config", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert client.get("/config").json()["max_delay_ms"] == 5.0


def test_nan_anywhere_in_any_body_is_refused(client: TestClient) -> None:
    r = client.put("/config", content='{"x": [1, {"y": NaN}]}', headers=JSON)
    assert r.status_code == 422 and "body.x.1.y: NaN" in r.json()["detail"]


def test_model_names_too_long_or_with_a_path_are_4xx(client: TestClient) -> None:
    r = client.post(f"/models/{'m' * 256}/load")
    assert r.status_code == 422 and "path.name" in r.json()["detail"]
    assert client.post(f"/models/{'m' * 255}/load").status_code == 404
    assert client.post("/models/a%00b/load").status_code == 422
    assert client.post("/models/..%2Fetc/load").status_code in (404, 422)


def test_oversized_body_is_413(client: TestClient) -> None:
    r = client.put("/config", content=b'{"threshold": 0.5, "pad": "' + b"x" * (2 << 20) + b'"}')
    assert r.status_code == 413


def _toml(tmp_path: Path, camera: str, stream: str = "") -> Path:
    cams = "".join(
        f'[[cameras]]\nname = "cam{k}"\nplane = {k}\nendpoint = "tcp://127.0.0.1:*"\n'
        + (camera if k == 1 else "")
        + "\n"
        for k in range(4)
    )
    path = tmp_path / "voxloc.toml"
    path.write_text(f"[stream]\n{stream}\n" + cams)
    return path


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("gain_adu = 1e-320\n", "gain_adu"),
        ("gain_adu = nan\n", "gain_adu"),
        ("baseline_adu = inf\n", "baseline_adu"),
        ("affine = [[1e308, 0, 0], [0, 1e308, 0]]\n", "affine"),
        ("affine = [[1, 0, 200], [0, 1, 0]]\n", "cameras.cam1.affine"),
    ],
)
def test_the_settings_file_has_the_same_bounds(tmp_path: Path, line: str, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        load_settings(_toml(tmp_path, line))


def test_translation_bound_follows_the_frame_size(tmp_path: Path) -> None:
    line = "affine = [[1, 0, 200], [0, 1, 0]]\n"
    settings = load_settings(_toml(tmp_path, line, "height = 128\nwidth = 128"))
    assert settings.camera("cam1").affine[0][2] == 200.0
