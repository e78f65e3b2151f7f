"""Acquisitions over the real app and sockets: started and stopped by REST, each frame
set tagged with its acquisition, server-side recordings that read back complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polling
import pytest

from engines.io.loctable import read_table


@pytest.fixture
def rec_service(make_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VOXLOC_RECORDING__DIRECTORY", str(tmp_path / "recordings"))
    return make_service()


def run_acquisition(svc: Any, frames: Any, name: str, record: str, n: int) -> dict:
    r = svc.client.post(
        "/acquisitions", json={"name": name, "metadata": {"sample": name}, "record": record}
    )
    assert r.status_code == 201, r.text
    acq = r.json()
    for i in range(n):
        svc.send_set(i, frames[i])  # frame indices from 0 in every acquisition
    msgs = svc.receive(n)
    assert [m.frame for m in msgs] == list(range(n))
    assert {m.acquisition for m in msgs} == {acq["id"]}
    stop = svc.client.post("/acquisitions/current/stop")
    assert stop.status_code == 200, stop.text
    return stop.json()


@pytest.mark.timeout(120)
def test_two_recorded_acquisitions_back_to_back(
    rec_service: Any, sim_frames: tuple, tmp_path: Path
) -> None:
    frames = sim_frames[0]
    a = run_acquisition(rec_service, frames, "first", "day1/first.csv", 40)
    b = run_acquisition(rec_service, frames, "second", "day1/second.h5", 30)
    assert a["state"] == b["state"] == "stopped"
    assert (a["frame_sets"], b["frame_sets"]) == (40, 30)
    listed = rec_service.client.get("/acquisitions").json()
    assert [x["id"] for x in listed["acquisitions"]] == [a["id"], b["id"]]
    assert listed["current"] == ""  # stopped: frames without an id belong to none
    rec = tmp_path / "recordings" / "day1"
    for info, path, n in ((a, rec / "first.csv", 40), (b, rec / "second.h5", 30)):
        table = read_table(path)
        assert len(table.frame) == info["localizations"] > 0
        assert set(table.frame.tolist()) <= set(range(n))
        meta = json.loads(path.with_suffix(path.suffix + ".json").read_text())
        assert meta["id"] == info["id"] and meta["frame_sets"] == n
        assert meta["metadata"] == {"sample": info["name"]}
        assert meta["models"][0]["model"] == "tiny" and meta["stopped_ns"] > meta["started_ns"]
        assert "registration" in meta and "token" not in meta["settings"]["api"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "x", "record": "../escape.csv"}, 400, "relative"),
        ({"name": "x", "record": "/etc/passwd.csv"}, 400, "relative"),
        ({"name": "x", "record": "run.txt"}, 400, ".csv or .h5"),
        ({"name": ""}, 422, "name"),
        ({"name": "x" * 300}, 422, "name"),
        ({"name": "x", "bogus": 1}, 422, "bogus"),
    ],
)
def test_bad_acquisition_requests(rec_service: Any, body: dict, status: int, words: str) -> None:
    r = rec_service.client.post("/acquisitions", json=body)
    assert r.status_code == status, r.text
    assert words in r.text


def test_stop_without_acquisition_is_a_conflict(rec_service: Any) -> None:
    r = rec_service.client.post("/acquisitions/current/stop")
    assert r.status_code == 409 and "no acquisition" in r.text
    assert rec_service.client.get("/acquisitions/nope").status_code == 404


@pytest.mark.timeout(120)
def test_voxloc_record_starts_a_new_file_per_acquisition(
    service: Any, sim_frames: tuple, tmp_path: Path
) -> None:
    import threading

    from clients.record import acquisition_path, open_stream_writer, record
    from clients.subscriber import LocalizationSubscriber
    from engines.io.loctable import TableMeta
    from service.wire import encode_frame

    meta = TableMeta(frames=0, height=64, width=64, px_nm=192, dz_nm=400, planes=4)
    out = tmp_path / "run.csv"
    frames = sim_frames[0]
    result: list = []
    with LocalizationSubscriber(service.pipeline.publish_endpoint) as sub:
        polling.wait_for(lambda: service.pipeline.publisher.subscribers >= 2, "recorder", 30)
        t = threading.Thread(
            target=lambda: result.append(
                record(
                    sub,
                    open_stream_writer(out, meta),
                    max_frames=50,
                    next_writer=lambda a: open_stream_writer(acquisition_path(out, a), meta),
                )
            )
        )
        t.start()
        for acq, n in (("mouse-1", 30), ("mouse-2", 20)):
            for i in range(n):
                for k in range(4):
                    service.cams[f"cam{k}"].send_multipart(
                        encode_frame(f"cam{k}", k, i, frames[i, k], 1 + i, acquisition=acq)
                    )
        t.join(60)
    assert result and result[0].files == [out, tmp_path / "run.mouse-2.csv"]
    first, second = read_table(out), read_table(tmp_path / "run.mouse-2.csv")
    assert set(first.frame.tolist()) <= set(range(30)) and len(first.frame) > 0
    assert set(second.frame.tolist()) <= set(range(20)) and len(second.frame) > 0
    assert result[0].rows == len(first.frame) + len(second.frame)


@pytest.mark.timeout(120)
def test_dashboard_image_starts_anew_with_an_acquisition(service: Any, sim_frames: tuple) -> None:
    from clients.dashboard.live import LiveImage
    from clients.render import RenderSettings

    live = LiveImage(
        service.pipeline.publish_endpoint,
        RenderSettings(),
        (64 * 192.0, 64 * 192.0),
        interval_s=0.05,
    )
    live.start()
    try:
        polling.wait_for(lambda: service.pipeline.publisher.subscribers >= 2, "dashboard", 30)
        frames = sim_frames[0]
        for i in range(12):
            service.send_set(i, frames[i])
        polling.wait_for(lambda: live.snapshot.info.get("frames") == 12, "12 frame sets", 30)
        service.client.post("/acquisitions", json={"name": "next"})
        for i in range(5):
            service.send_set(i, frames[20 + i])
        polling.wait_for(lambda: live.snapshot.info.get("frames") == 5, "a fresh image", 30)
        assert live.snapshot.info["acquisition"].endswith("next")
    finally:
        live.stop()


@pytest.mark.timeout(120)
def test_camera_publishers_start_an_acquisition(service: Any, sim_frames: tuple) -> None:
    from clients.camera import CameraPublisher

    frames = sim_frames[0]
    eps = service.pipeline.camera_endpoints()
    pubs = [
        CameraPublisher(eps[f"cam{k}"], f"cam{k}", k, acquisition="run-a", sndhwm=64)
        for k in range(4)
    ]
    polling.wait_for(
        lambda: all(c["connects"] >= 2 for c in service.stats()["cameras"].values()),
        "the publishers' connections",
        30,
    )
    try:
        for acq in ("run-a", "run-b"):
            for p in pubs:
                p.new_acquisition(acq)
            for i in range(10):  # indices from 0 in each acquisition
                for k, p in enumerate(pubs):
                    p.publish(i, frames[i, k])
        msgs = service.receive(20)
    finally:
        for p in pubs:
            p.close()
    assert [(m.acquisition, m.frame) for m in msgs] == [
        (a, i) for a in ("run-a", "run-b") for i in range(10)
    ]
    listed = service.client.get("/acquisitions").json()
    assert [a["id"] for a in listed["acquisitions"]] == ["run-a", "run-b"]
    assert listed["current"] == "run-b"
