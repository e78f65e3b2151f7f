"""ZeroMQ CURVE on the camera and localization sockets (issue 14, item 6): with keys made
by ``voxloc keys``, a camera without an allowed key is refused and counted, a subscriber
without one gets nothing, and with allowed keys the stream runs end to end, encrypted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from fastapi.testclient import TestClient

from clients.camera import CameraPublisher
from clients.cli import main
from clients.subscriber import LocalizationSubscriber
from service.api import create_app
from service.curve import CurveClientKeys, CurveKeyError
from service.pipeline import Pipeline
from service.settings import SecuritySettings
from tests.service.conftest import service_settings, wait_for


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    d = tmp_path / "keys"
    assert main(["keys", str(d), "--client", "cam", "--client", "rec"]) == 0
    out = capsys.readouterr().out
    assert "curve = true" in out and f"--curve-key {d.resolve()}/cam.key_secret" in out
    return d


@pytest.fixture
def curved(keys: Path) -> Iterator[Pipeline]:
    security = SecuritySettings(
        curve=True, server_key=keys / "service.key_secret", client_keys=keys / "clients"
    )
    settings = service_settings().model_copy(update={"security": security})
    ctx = zmq.Context()
    pipeline = Pipeline(settings, context=ctx)
    pipeline.start()
    yield pipeline
    pipeline.stop()
    ctx.destroy(linger=0)


def _cameras(
    pipeline: Pipeline, ctx: zmq.Context, curve: dict[str, CurveClientKeys | None]
) -> dict[str, CameraPublisher]:
    eps = pipeline.camera_endpoints()
    return {
        name: CameraPublisher(
            eps[name], name, int(name[-1]), context=ctx, curve=curve[name], sndhwm=64
        )
        for name in eps
    }


def _send(pubs: dict[str, CameraPublisher], frames: np.ndarray, first: int = 0) -> None:
    for i, planes in enumerate(frames):
        for k, image in enumerate(planes):
            pubs[f"cam{k}"].publish(first + i, image.astype(np.float32))


def _until_streaming(
    pubs: dict[str, CameraPublisher], sub: LocalizationSubscriber, frames: np.ndarray, first: int
) -> int:
    """Frame sets until one comes through (a CURVE handshake takes a moment, frames sent
    before it ends are dropped by the camera); the next free frame index."""
    i = first
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _send(pubs, frames[:1], first=i)
        i += 1
        if sub.recv(0.3) is not None:
            while sub.recv(0.3) is not None:
                pass
            return i
    raise TimeoutError("no localization came through")


def _receive(sub: LocalizationSubscriber, n: int, timeout_s: float = 60) -> list:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        msg = sub.recv(0.2)
        if msg is not None:
            out.append(msg)
    return out


@pytest.mark.timeout(120)
def test_curve_refuses_unknown_keys_and_runs_encrypted_with_allowed_ones(
    curved: Pipeline, keys: Path, sim_frames: tuple
) -> None:
    frames = sim_frames[0][:12]
    cam = CurveClientKeys.from_files(keys / "service.key", keys / "cam.key_secret")
    rec = CurveClientKeys.from_files(keys / "service.key", keys / "rec.key_secret")
    public, secret = zmq.curve_keypair()
    stranger = CurveClientKeys(cam.server_public, public, secret)
    ctx = zmq.Context()
    try:
        # a subscriber with an allowed key, one with an unknown key, one without CURVE
        good = LocalizationSubscriber(curved.publish_endpoint, context=ctx, curve=rec)
        bad = LocalizationSubscriber(curved.publish_endpoint, context=ctx, curve=stranger)
        plain = LocalizationSubscriber(curved.publish_endpoint, context=ctx)
        wait_for(lambda: curved.publisher.subscribers == 1, "the allowed subscriber")

        # cam1 with an unknown key, cam2 without CURVE: refused and counted, nothing in
        pubs = _cameras(curved, ctx, {"cam0": cam, "cam1": stranger, "cam2": None, "cam3": cam})
        _send(pubs, frames[:3])
        wait_for(
            lambda: all(
                curved.stats.cameras[c].rejects["unauthenticated"] >= 1 for c in ("cam1", "cam2")
            ),
            "the refused handshakes to be counted",
        )
        assert curved.stats.cameras["cam1"].frames_in == 0
        assert curved.stats.cameras["cam2"].frames_in == 0
        assert curved.curve is not None and curved.curve.denied >= 2  # cam1 and `bad`
        with TestClient(create_app(curved, dashboard=False)) as client:
            stats = client.get("/stats").json()
            metrics = client.get("/metrics").text
        assert stats["rejects"]["unauthenticated"] >= 2
        assert 'voxloc_camera_rejects_total{camera="cam1",reason="unauthenticated"}' in metrics
        assert "voxloc_curve_refused_total" in metrics

        # the same cameras with allowed keys: every frame set arrives, encrypted
        for pub in pubs.values():
            pub.close()
        pubs = _cameras(curved, ctx, dict.fromkeys(pubs, cam))
        for pub in pubs.values():
            pub.stats.dropped.clear()
        assert all(p._sock.getsockopt(zmq.MECHANISM) == zmq.CURVE for p in pubs.values())
        first = _until_streaming(pubs, good, frames, 100)
        _send(pubs, frames, first=first)
        got = _receive(good, len(frames))
        assert [m.frame for m in got] == list(range(first, first + len(frames)))
        assert all(p.stats.dropped_total == 0 for p in pubs.values())
        assert bad.recv(0.5) is None and plain.recv(0.1) is None
        for pub in pubs.values():
            pub.close()
        for s in (good, bad, plain):
            s.close()
    finally:
        ctx.destroy(linger=0)


@pytest.mark.timeout(60)
def test_a_key_added_later_is_allowed_without_restart(
    curved: Pipeline, keys: Path, capsys: pytest.CaptureFixture
) -> None:
    time.sleep(0.05)  # a directory mtime the new key file changes
    assert main(["keys", str(keys), "--client", "late"]) == 0
    capsys.readouterr()
    late = CurveClientKeys.from_files(keys / "service.key", keys / "late.key_secret")
    ctx = zmq.Context()
    try:
        with LocalizationSubscriber(curved.publish_endpoint, context=ctx, curve=late):
            wait_for(lambda: curved.publisher.subscribers == 1, "the late subscriber")
    finally:
        ctx.destroy(linger=0)


def test_settings_and_keys_fail_clearly(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="security.server_key"):
        SecuritySettings(curve=True, server_key=tmp_path / "nope", client_keys=keys / "clients")
    with pytest.raises(ValueError, match="security.client_keys"):
        SecuritySettings(curve=True, server_key=keys / "service.key_secret")
    with pytest.raises(CurveKeyError, match="holds no secret key"):
        CurveClientKeys.from_files(keys / "service.key", keys / "cam.key")
    assert SecuritySettings().curve is False  # off by default (loopback)
    with pytest.raises(ValueError, match="exists"):
        from clients.commands.keys import make_keys

        make_keys(keys, ["cam"])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_voxloc_camera_and_record_with_curve_keys(
    curved: Pipeline, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The command-line sides: ``voxloc camera`` and ``voxloc record`` with their keys."""
    import threading

    from engines.io.loctable import read_table

    server = str(keys / "service.key")
    out = tmp_path / "locs.csv"
    codes: dict[str, int] = {}
    record = threading.Thread(
        target=lambda: codes.setdefault(
            "record",
            main(
                [
                    "record",
                    "-o",
                    str(out),
                    "--endpoint",
                    curved.publish_endpoint or "",
                    "--frames",
                    "10",
                    "--duration",
                    "90",
                    "--curve-server-key",
                    server,
                    "--curve-key",
                    str(keys / "rec.key_secret"),
                ]
            ),
        )
    )
    record.start()
    wait_for(lambda: curved.publisher.subscribers == 1, "voxloc record to subscribe")
    endpoints = [a for ep in curved.camera_endpoints().values() for a in ("--endpoint", ep)]
    code = main(
        [
            "camera",
            *endpoints,
            "--frames",
            "60",
            "--rate",
            "20",
            "--no-misalign",
            "--curve-server-key",
            server,
            "--curve-key",
            str(keys / "cam.key_secret"),
        ]
    )
    record.join(90)
    capsys.readouterr()
    assert code == 0 and codes.get("record") == 0
    assert curved.stats.published >= 10
    assert all(not c.rejects.get("unauthenticated") for c in curved.stats.cameras.values())
    assert len(read_table(out)) > 0


@pytest.mark.timeout(60)
def test_the_dashboard_subscribes_with_keys_of_its_own(curved: Pipeline) -> None:
    pytest.importorskip("clients.dashboard", reason="clients.dashboard not installed")
    with TestClient(create_app(curved, dashboard=True)) as client:
        assert client.get("/dashboard/info").status_code == 200
        client.get("/dashboard/image.png")  # starts the dashboard's subscriber
        wait_for(lambda: curved.publisher.subscribers == 1, "the dashboard's subscription")
    assert curved.curve is not None and curved.curve.denied == 0
