"""Fixtures of the service tests: a tiny model, settings on random ports, a running
pipeline with its real FastAPI app, camera PUSH sockets and a localization SUB socket."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polling
import pytest
import torch
import zmq
from fastapi.testclient import TestClient

from engines.config import SimSettings
from engines.modeldir import ModelInfo, save_model
from engines.simulator import Simulator
from service.api import create_app
from service.pipeline import Pipeline
from service.settings import CameraSettings, ServiceSettings
from service.wire import LocsMessage, decode_locs, encode_frame

WAIT_S = 60.0
TINY_THRESHOLD = 0.7


def make_tiny_model(root: Path, name: str, seed: int) -> Path:
    """An untrained 1-layer model: fast, deterministic, gives a few localizations/frame."""
    torch.manual_seed(seed)
    info = ModelInfo(
        name=name,
        version=f"tiny-{seed}",
        settings=SimSettings(),
        channels=(4,),
        kernels=(3,),
        input_offset=10.0,
        input_scale=50.0,
    )
    net = info.build().eval()
    return save_model(net, info, root / name)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root, "tiny", seed=1)
    make_tiny_model(root, "tiny2", seed=2)
    return root


@pytest.fixture(autouse=True)
def _models_on_path(model_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLOC_MODELS", str(model_root))


@pytest.fixture(scope="session")
def sim_frames() -> tuple[np.ndarray, object]:
    """500 simulated 4x64x64 frames (paper units) and their SimBatch."""
    sim = Simulator(SimSettings(), seed=7)
    batch = sim.sample(500, (0, 30))
    return batch.frames.numpy(), batch


def service_settings(stream: dict | None = None, **inference: object) -> ServiceSettings:
    cams = [CameraSettings(name=f"cam{k}", plane=k, endpoint="tcp://127.0.0.1:*") for k in range(4)]
    inf = {
        "model": "tiny",
        "backend": "torch",
        "threshold": TINY_THRESHOLD,
        "drop_policy": "block",
        **inference,
    }
    return ServiceSettings(
        cameras=cams,
        inference=inf,
        stream={"publish": "tcp://127.0.0.1:*", "assembly_timeout_ms": 2000, **(stream or {})},
    )


class Service:
    """A started pipeline, its app under TestClient, and client sockets."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.ctx = zmq.Context()
        self.closed = False
        self.pipeline = Pipeline(settings)
        self.pipeline.start()
        self.client = TestClient(create_app(self.pipeline))
        self.endpoints = self.pipeline.camera_endpoints()
        self.cams = {name: self.camera(name) for name in self.endpoints}
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(self.pipeline.publish_endpoint)
        wait_for(lambda: self.pipeline.publisher.subscribers >= 1, "subscription")

    def camera(self, name: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 16)
        sock.connect(self.endpoints[name])
        return sock

    def send(self, cam: str, plane: int, frame: int, image: np.ndarray) -> None:
        self.cams[cam].send_multipart(
            encode_frame(cam, plane, frame, image, time.time_ns()), copy=False
        )

    def send_set(self, frame: int, planes: np.ndarray) -> None:
        for k in range(planes.shape[0]):
            self.send(f"cam{k}", k, frame, planes[k])

    def receive(self, n: int, timeout_s: float = WAIT_S) -> list[LocsMessage]:
        out: list[LocsMessage] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.sub.poll(left_ms):
                raise TimeoutError(f"received {len(out)} of {n} localization messages")
            out.append(decode_locs(self.sub.recv_multipart()))
        return out

    def stats(self) -> dict:
        return self.client.get("/stats").json()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.close()
        for sock in [*self.cams.values(), self.sub]:
            sock.close(linger=0)
        self.pipeline.stop()
        self.ctx.term()


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    polling.wait_for(cond, what, timeout_s)


@pytest.fixture
def make_service() -> Iterator[Callable[..., Service]]:
    """Factory: ``make_service(stream=None, **inference_settings)``; every service is
    closed after."""
    made: list[Service] = []

    def make(stream: dict | None = None, **inference: object) -> Service:
        made.append(Service(service_settings(stream, **inference)))
        return made[-1]

    yield make
    for svc in made:
        svc.close()


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service()
