"""Acceptance of issue 6 item 4 in the live service: real sockets, the real app, the shipped
model. Cameras 1..3 are shifted by known sub-pixel translations that the configured
registration undoes (bilinear resampling in the service); beyond that, planes 1..3 are
displaced by 30 nm each (the simulator's per-plane drift). After a few thousand
localizations ``GET /stats`` reports each plane's offset within 5 nm; with feedback on,
the service corrects its own registration."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import polling
import pytest
import torch
import zmq
from fastapi.testclient import TestClient

from engines.config import SimSettings
from engines.psf import render_planes
from engines.simulator import Simulator
from service.api import create_app
from service.pipeline import Pipeline
from service.settings import CameraSettings, ServiceSettings
from service.wire import decode_locs, encode_frame

PX_NM = 192.0
FRAMES = 80  # acceptance: ~3500 localizations
MORE_FRAMES = 40  # after a feedback
OFFSETS = np.array([[0.0, 0.0], [30.0, -30.0], [-30.0, 30.0], [0.0, 30.0]])  # nm
SHIFTS_PX = np.array([[0.0, 0.0], [1.3, -0.7], [0.9, -0.4], [-0.5, 0.8]])  # camera -> ref
AFFINES = [[[1.0, 0.0, float(tx)], [0.0, 1.0, float(ty)]] for tx, ty in SHIFTS_PX]
WAIT_S = 300.0


@pytest.fixture(scope="module")
def camera_frames() -> np.ndarray:
    """``(FRAMES + MORE_FRAMES, 4, 64, 64)`` float32 camera images, 30-50 molecules per
    frame. Camera k sees the reference plane shifted by ``SHIFTS_PX[k]`` (its pixel at
    ``c`` images reference position ``c + shift``), rendered exactly, not interpolated;
    its plane is displaced by ``OFFSETS[k]`` beyond that."""
    s = SimSettings()
    sim = Simulator(s, seed=11)
    n = FRAMES + MORE_FRAMES
    batch = sim.sample(n, (30, 50), drift=False)
    drift = torch.tensor(OFFSETS - SHIFTS_PX * PX_NM, dtype=torch.float32)
    clean = render_planes(
        batch.xyz_nm,
        batch.weights,
        drift[None].expand(n, -1, -1),
        torch.tensor(s.focal_planes_nm()),
        px_nm=PX_NM,
        height=64,
        width=64,
        psf=s.psf,
    )
    return sim.add_noise(clean + s.psf.b).numpy().astype(np.float32)


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    polling.wait_for(cond, what, timeout_s, interval_s=0.05)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[Pipeline, TestClient]]]:
    """``serve(**drift)``: the shipped model behind real sockets, drift estimation on."""
    ctx = zmq.Context()
    made: list[tuple[Pipeline, TestClient]] = []

    def start(**drift: object) -> tuple[Pipeline, TestClient]:
        cams = [
            CameraSettings(name=f"cam{k}", plane=k, endpoint="tcp://127.0.0.1:*", affine=AFFINES[k])
            for k in range(4)
        ]
        settings = ServiceSettings(
            cameras=cams,
            drift={"enabled": True, "queue_sets": 256, **drift},
            inference={"model": "default", "backend": "torch", "drop_policy": "block"},
            stream={"publish": "tcp://127.0.0.1:*", "assembly_timeout_ms": 5000},
        )
        pipeline = Pipeline(settings)
        pipeline.start()
        made.append((pipeline, TestClient(create_app(pipeline))))
        return made[-1]

    yield start
    for pipeline, client in made:
        client.close()
        pipeline.stop()
    ctx.term()


def stream(pipeline: Pipeline, frames: np.ndarray, first: int = 0) -> int:
    """Send the frame sets (indices from ``first``) through the camera sockets and wait for
    their localization messages; returns the number of localizations."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pipeline.publish_endpoint)
    wait_for(lambda: pipeline.publisher.subscribers >= 1, "subscription", 30)
    cams = []
    for name, endpoint in pipeline.camera_endpoints().items():
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        cams.append((name, int(name[3:]), sock))
    locs = 0
    try:
        for n, planes in enumerate(frames, start=first):
            for name, k, sock in cams:
                sock.send_multipart(encode_frame(name, k, n, planes[k], time.time_ns()), copy=False)
        deadline = time.monotonic() + WAIT_S
        for _ in range(len(frames)):
            if not sub.poll(max(int((deadline - time.monotonic()) * 1000), 1)):
                raise TimeoutError("localization messages missing")
            locs += len(decode_locs(sub.recv_multipart()).locs.xyz_nm)
    finally:
        for *_, sock in cams:
            sock.close(linger=0)
        sub.close(linger=0)
    return locs


def drift_stats(client: TestClient) -> dict:
    return client.get("/stats").json()["observers"]["drift"]


def settled(client: TestClient, frames: int) -> bool:
    d = drift_stats(client)
    return (
        d["sets_seen"] == frames
        and d["queued"] == 0
        and d["sets_not_estimated"] == 0
        and d["planes"] is not None
    )


def offsets_of(stats: dict) -> np.ndarray:
    return np.array([[p["x_nm"], p["y_nm"]] for p in stats["planes"]], dtype=float)


@pytest.mark.slow
def test_injected_30nm_offsets_within_5nm(serve, camera_frames):
    pipeline, client = serve()
    locs = stream(pipeline, camera_frames[:FRAMES])
    wait_for(lambda: settled(client, FRAMES), "the drift estimate of every frame set")
    stats = drift_stats(client)
    assert locs >= 2500, f"only {locs} localizations"  # "a few thousand"
    got = offsets_of(stats)
    assert np.abs(got - OFFSETS).max() < 5.0, (got, stats)
    assert all(p["locs"] > 400 for p in stats["planes"]), stats
    assert all(0 < p["se_x_nm"] < 2.5 and 0 < p["se_y_nm"] < 2.5 for p in stats["planes"][1:])
    metrics = client.get("/metrics").text
    line = next(
        m
        for m in metrics.splitlines()
        if m.startswith('voxloc_plane_offset_nm{axis="x",plane="1"}')
    )
    assert abs(float(line.split()[-1]) - 30.0) < 5.0
    assert client.get("/registration").json()["cameras"]["cam1"]["affine"] == AFFINES[1]


@pytest.mark.slow
def test_feedback_corrects_the_registration(serve, camera_frames):
    """Feedback after 600 measured localizations: the translation of each camera moves by
    the offset; frame sets sent afterwards (registered with the correction) show ~0."""
    pipeline, client = serve(feedback=True, feedback_min_locs=600, update_sets=5)
    stream(pipeline, camera_frames[:FRAMES])
    wait_for(lambda: drift_stats(client)["feedbacks"] == 1, "a registration feedback")
    cameras = client.get("/registration").json()["cameras"]
    for k in range(1, 4):
        shift_nm = (
            np.array(cameras[f"cam{k}"]["affine"])[:, 2] - np.array(AFFINES[k])[:, 2]
        ) * PX_NM
        assert np.abs(shift_nm + OFFSETS[k]).max() < 5.0, (k, shift_nm)
    stream(pipeline, camera_frames[FRAMES:], first=FRAMES)
    wait_for(lambda: settled(client, FRAMES + MORE_FRAMES), "the estimate after the feedback")
    stats = drift_stats(client)
    assert stats["feedbacks"] == 1, stats
    assert stats["window_locs"] > 300, stats  # frame sets registered with the correction
    assert np.abs(offsets_of(stats)).max() < 5.0, stats
