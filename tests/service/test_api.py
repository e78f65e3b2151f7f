"""The control plane on a running pipeline: health, models, config, registration, auth,
stats and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable

import polling
import pytest
from fastapi.testclient import TestClient

from clients.dashboard import include_dashboard
from service.api import create_app


def test_health_models_and_openapi(service: object) -> None:
    c = service.client
    live = c.get("/health/live").json()
    assert live == {"status": "live", "state": "running", "instance": live["instance"]}
    assert live["instance"] == c.app.state.instance
    ready = c.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["model"] == "tiny"
    models = c.get("/models").json()
    assert models["active"]["name"] == "tiny" and models["loading"] is None
    assert {"tiny", "tiny2", "default"} <= {m["name"] for m in models["available"]}
    paths = c.get("/openapi.json").json()["paths"]
    for path in (
        "/health/live",
        "/health/ready",
        "/models",
        "/models/{name}/load",
        "/config",
        "/registration",
        "/stats",
        "/metrics",
    ):
        assert path in paths
    assert c.get("/docs").status_code == 200


def test_not_ready_after_stop(make_service: Callable) -> None:
    svc = make_service()
    svc.pipeline.stop()
    r = svc.client.get("/health/ready")
    assert r.status_code == 503 and "stopped" in r.json()["detail"]


@pytest.mark.timeout(60)
def test_threshold_change_applies_to_later_frame_sets(service: object, sim_frames: tuple) -> None:
    frames = sim_frames[0]
    service.send_set(0, frames[0])
    assert service.receive(1)[0].threshold == 0.7
    r = service.client.put("/config", json={"threshold": 0.65, "max_batch": 2})
    assert r.status_code == 200
    assert r.json()["threshold"] == 0.65 and r.json()["max_batch"] == 2
    assert service.client.get("/config").json()["threshold"] == 0.65
    service.send_set(1, frames[1])
    msg = service.receive(1)[0]
    assert msg.threshold == 0.65 and (msg.locs.confidence > 0.65).all()


@pytest.mark.timeout(60)
def test_refine_applies_to_later_frame_sets_and_says_so(service: object, sim_frames: tuple) -> None:
    frames = sim_frames[0]
    service.client.put("/config", json={"refine": True})
    service.send_set(0, frames[0])  # a set without localizations refines to nothing
    assert len(service.receive(1)[0].locs) == 0
    service.client.put("/config", json={"refine": False})
    service.send_set(1, frames[3])
    plain = service.receive(1)[0]
    assert plain.refined is False and service.client.get("/config").json()["refine"] is False
    r = service.client.put("/config", json={"refine": True})
    assert r.status_code == 200 and r.json()["refine"] is True
    service.send_set(2, frames[3])  # the same pixels again, refined
    msg = service.receive(1)[0]
    assert msg.refined is True and len(msg.locs) == len(plain.locs) > 0
    moved = msg.locs.xyz_nm - plain.locs.xyz_nm
    assert abs(moved).max() > 0.5 and abs(moved).max() <= 192.0 + 1e-3  # within a pixel
    service.client.put("/config", json={"refine": False})
    service.send_set(3, frames[3])
    again = service.receive(1)[0]
    assert again.refined is False
    assert abs(again.locs.xyz_nm - plain.locs.xyz_nm).max() < 1e-3
    (acq,) = service.client.get("/acquisitions").json()["acquisitions"]
    assert [(m["refined"], m["from_frame"]) for m in acq["models"]] == [
        (True, 0),
        (False, 1),
        (True, 2),
        (False, 3),
    ]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"threshold": 1.5}, "1.5"),
        ({"refine": 1}, "refine"),
        ({"refine": "sometimes"}, "sometimes"),
        ({"drop_policy": "sometimes"}, "sometimes"),
        ({"max_batch": 0}, "max_batch"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_config_is_refused_with_the_value(service: object, body: dict, needle: str) -> None:
    r = service.client.put("/config", json=body)
    assert r.status_code == 422 and needle in r.text
    assert service.client.get("/config").json()["threshold"] == 0.7


def test_registration_roundtrip_and_validation(service: object) -> None:
    c = service.client
    reg = c.get("/registration").json()["cameras"]
    assert reg["cam2"] == {
        "plane": 2,
        "affine": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        "gain_adu": 1.0,
        "baseline_adu": 0.0,
    }
    r = c.put(
        "/registration",
        json={"cameras": {"cam2": {"affine": [[1, 0, 2], [0, 1, 0]], "gain_adu": 3}}},
    )
    assert r.status_code == 200
    assert r.json()["cameras"]["cam2"]["affine"][0] == [1.0, 0.0, 2.0]
    assert r.json()["cameras"]["cam2"]["gain_adu"] == 3.0
    assert not service.pipeline.aligner.warp("cam2").identity
    singular = c.put(
        "/registration", json={"cameras": {"cam1": {"affine": [[1, 2, 0], [2, 4, 0]]}}}
    )
    assert singular.status_code == 422 and "singular" in singular.text
    unknown = c.put("/registration", json={"cameras": {"cam7": {"gain_adu": 2}}})
    assert unknown.status_code == 422 and "cam7" in unknown.text
    bad_gain = c.put("/registration", json={"cameras": {"cam1": {"gain_adu": -1}}})
    assert bad_gain.status_code == 422
    assert c.get("/registration").json()["cameras"]["cam1"]["gain_adu"] == 1.0


def test_mutating_endpoints_need_the_token(service: object) -> None:
    client = TestClient(create_app(service.pipeline, token="s3cret"))
    with client:
        assert client.put("/config", json={"threshold": 0.6}).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert client.put("/config", json={"threshold": 0.6}, headers=bad).status_code == 401
        assert client.post("/models/tiny2/load", headers=bad).status_code == 401
        assert client.put("/registration", json={"cameras": {}}).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.put("/config", json={"threshold": 0.6}, headers=good).status_code == 200
        assert client.get("/config").json()["threshold"] == 0.6  # reads need no token
        assert client.get("/stats").status_code == 200


@pytest.mark.timeout(60)
def test_stats_and_metrics_after_traffic(service: object, sim_frames: tuple) -> None:
    frames = sim_frames[0]
    for i in range(5):
        service.send_set(i, frames[i])
    service.receive(5)
    s = service.stats()
    assert s["state"] == "running" and s["model"]["name"] == "tiny"
    assert s["cameras"]["cam0"]["frames_in"] == 5 and s["cameras"]["cam0"]["state"] == "streaming"
    assert s["cameras"]["cam0"]["endpoint"].startswith("tcp://127.0.0.1:")
    assert s["assembler"]["assembled"] == 5 and s["publisher"]["published"] == 5
    assert s["publisher"]["subscribers"] == 1 and s["publisher"]["seq"] == 4
    assert s["inference"]["frame_sets"] == 5 and s["inference"]["mean_batch_size"] >= 1
    assert s["latency_ms"]["count"] == 5 and s["latency_ms"]["p99"] >= s["latency_ms"]["p50"]
    assert s["batcher"] == {"dropped": 0, "depth": 0, "queue_size": 64, "policy": "block"}
    text = service.client.get("/metrics").text
    assert "voxloc_framesets_published_total 5.0" in text
    assert 'voxloc_camera_frames_total{camera="cam3"} 5.0' in text
    assert 'voxloc_model_info{backend="torch/cpu",name="tiny",version="tiny-1"} 1.0' in text
    assert 'voxloc_queue_depth{queue="batcher"}' in text


class Counting:
    name = "counting"

    def __init__(self) -> None:
        self.frames: list[int] = []
        self.shapes: set[tuple] = set()

    def observe(self, msg: object, frame_set: object) -> None:
        self.frames.append(msg.frame)
        self.shapes.add((frame_set.planes.shape, frame_set.planes.dtype.name))

    def stats(self) -> dict:
        return {"seen": len(self.frames)}


@pytest.mark.timeout(60)
def test_observers_see_every_published_frame_set(service: object, sim_frames: tuple) -> None:
    obs = Counting()
    service.pipeline.add_observer(obs)
    for i in range(3):
        service.send_set(i, sim_frames[0][i])
    service.receive(3)
    # observers run right after the message is sent
    polling.wait_for(lambda: len(obs.frames) >= 3, "the observer to see 3 frame sets", 30)
    assert obs.frames == [0, 1, 2] and obs.shapes == {((4, 64, 64), "float32")}
    assert service.stats()["observers"] == {"counting": {"seen": 3}}


def test_dashboard_router_is_included_beside_the_service_routes(service: object) -> None:
    app = create_app(service.pipeline)  # as `voxloc serve` builds it
    include_dashboard(app, service.pipeline)
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert client.get("/stats").status_code == 200  # the service routes stay intact


@pytest.mark.timeout(60)
def test_null_backend_serves_every_frame_set_without_localizations(
    make_service: object, sim_frames: tuple
) -> None:
    svc = make_service(backend="null")
    for i in range(5):
        svc.send_set(i, sim_frames[0][i])
    msgs = svc.receive(5)
    assert [m.frame for m in msgs] == list(range(5))
    assert all(len(m.locs.xyz_nm) == 0 for m in msgs)
    assert svc.stats()["model"]["backend"] == "null/cpu"
