"""Faults on real sockets: bad messages of every kind, out-of-order and duplicated
frames, a camera that stops and restarts. The service stays up, counts each by reason
and loses no good frame set."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import polling
import pytest

from service.wire import WIRE_VERSION, encode_frame


def header(**fields: object) -> bytes:
    base = {
        "v": WIRE_VERSION,
        "kind": "frame",
        "source": "cam1",
        "plane": 1,
        "frame": 0,
        "t_ns": time.time_ns(),
        "dtype": "uint16",
        "shape": [64, 64],
    }
    return msgpack.packb({**base, **fields})


def send_bad_messages(svc: object) -> None:
    cam = svc.cams["cam1"]
    img = np.zeros((64, 64), np.uint16)
    cam.send_multipart([b"\xc1\xff not msgpack", img])  # malformed
    cam.send(np.random.default_rng(1).bytes(300))  # garbage
    cam.send_multipart([header(dtype="int32"), np.zeros((64, 64), np.int32)])  # dtype
    cam.send_multipart(encode_frame("cam1", 1, 5, np.zeros((32, 32), np.uint16), 0))  # shape
    cam.send_multipart([header(v=99), img])  # version
    cam.send_multipart([header(), img[:10]])  # size
    cam.send_multipart(encode_frame("cam1", 3, 5, img, 0))  # plane
    cam.send_multipart(encode_frame("cam9", 1, 5, img, 0))  # source
    nan = np.full((64, 64), np.nan, np.float32)
    cam.send_multipart(encode_frame("cam1", 1, 5, nan, 0))  # nonfinite


@pytest.mark.timeout(120)
def test_bad_messages_reordering_and_camera_restart(service: object, sim_frames: tuple) -> None:
    svc = service
    frames = sim_frames[0][:60]
    n = len(frames)
    send_bad_messages(svc)
    order = np.arange(n)
    order[10:20] = order[10:20][::-1]  # cam0 sends frames 10..19 backwards
    for i in range(n):
        for k in (3, 2, 1):  # planes of a set in reverse order
            if k == 2 and 25 <= i < 40:
                continue  # cam2 is down for these frames
            svc.send(f"cam{k}", k, i, frames[i, k])
        svc.send("cam0", 0, int(order[i]), frames[order[i], 0])
        if i % 7 == 0:
            svc.send("cam3", 3, i, frames[i, 3])  # duplicate
        if i == 24:
            svc.cams["cam2"].close(linger=5000)  # camera stops mid-stream ...
        if i == 39:
            svc.cams["cam2"] = svc.camera("cam2")  # ... a new process comes back
            for j in range(25, 40):  # and delivers what it missed
                svc.send("cam2", 2, j, frames[j, 2])
    msgs = svc.receive(n)
    assert [m.frame for m in msgs] == list(range(n))
    assert [m.seq for m in msgs] == list(range(n))
    svc.send("cam0", 0, 3, frames[3, 0])  # its set is long published
    polling.wait_for(
        lambda: svc.stats()["cameras"]["cam0"]["rejects"].get("duplicate", 0) >= 1,
        "the late duplicate of cam0 to be rejected",
        30,
        interval_s=0.02,
    )
    stats = svc.stats()
    assert stats["cameras"]["cam1"]["rejects"] == {
        "malformed": 2,
        "dtype": 1,
        "shape": 1,
        "version": 1,
        "size": 1,
        "plane": 1,
        "source": 1,
        "nonfinite": 1,
    }
    assert stats["cameras"]["cam3"]["rejects"] == {"duplicate": len(range(0, n, 7))}
    assert stats["cameras"]["cam0"]["rejects"] == {"duplicate": 1}
    assert stats["cameras"]["cam2"]["rejects"] == {}
    assert stats["cameras"]["cam2"]["connects"] >= 2
    assert stats["assembler"]["assembled"] == n
    assert stats["assembler"]["dropped"] == {"timeout": 0, "missing": 0, "overflow": 0}
    assert stats["rejects"]["malformed"] == 2 and stats["state"] == "running"
    metrics = svc.client.get("/metrics").text
    assert 'voxloc_camera_rejects_total{camera="cam1",reason="dtype"} 1.0' in metrics


@pytest.mark.timeout(60)
def test_a_camera_that_never_delivers_costs_only_its_frame_sets(
    make_service: object, sim_frames: tuple
) -> None:
    svc = make_service()
    assert svc.client.put("/config", json={"assembly_timeout_ms": 100}).status_code == 200
    frames = sim_frames[0]
    for i in range(6):
        for k in range(4):
            if not (k == 1 and i in (2, 3)):
                svc.send(f"cam{k}", k, i, frames[i, k])
    msgs = svc.receive(4)
    assert [m.frame for m in msgs] == [0, 1, 4, 5]
    svc.send("cam1", 1, 2, frames[2, 1])  # arrives after its set was dropped
    polling.wait_for(
        lambda: svc.stats()["cameras"]["cam1"]["rejects"] == {"stale": 1},
        "the late frame of cam1 to be rejected as stale",
        30,
        interval_s=0.02,
    )
    stats = svc.stats()
    assert stats["assembler"]["dropped"]["timeout"] == 2
