"""CameraPublisher over real ZeroMQ sockets, and the simulated scene's geometry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import zmq

from clients.camera import CameraPublisher, SimulatedSource, run_cameras
from clients.scene import Scene, SceneConfig
from engines.config import NoiseParams, SimSettings
from engines.errors import FormatError, StreamError
from service.aligner import PlaneWarp
from service.settings import CameraRegistration
from service.wire import decode_frame


@pytest.fixture
def pull(ctx: zmq.Context) -> Iterator[Callable[..., tuple[zmq.Socket, str]]]:
    """Factory: ``pull(rcvhwm=...)`` binds a PULL socket to a random port; closed after."""
    socks: list[zmq.Socket] = []

    def make(rcvhwm: int = 1000) -> tuple[zmq.Socket, str]:
        sock = ctx.socket(zmq.PULL)
        socks.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return sock, f"tcp://127.0.0.1:{port}"

    yield make
    for sock in socks:
        sock.close(linger=0)


def test_publish_delivers_decodable_frames(ctx: zmq.Context, pull: Callable) -> None:
    sock, endpoint = pull()
    pub = CameraPublisher(endpoint, "cam2", 2, context=ctx)
    img = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    assert pub.publish(0, img, t_ns=123)
    img[:] = 0  # the caller may reuse its buffer at once
    assert pub.publish(1, img)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    first = decode_frame(sock.recv_multipart())
    second = decode_frame(sock.recv_multipart())
    pub.close()
    assert (first.source, first.plane, first.frame, first.t_ns) == ("cam2", 2, 0, 123)
    assert np.array_equal(first.image, np.arange(120, dtype=np.uint16).reshape(12, 10))
    assert second.frame == 1 and not second.image.any()
    assert pub.stats.published == 2 and pub.stats.dropped_total == 0


@pytest.mark.parametrize(
    "image, frame, match",
    [
        (np.zeros((8, 8), np.float64), 1, "uint16 or float32"),
        (np.zeros((8, 9), np.uint16), 1, "expected 8x8 uint16, got 8x9"),
        (np.zeros((8, 8), np.float32), 1, "expected 8x8 uint16, got 8x8 float32"),
        (np.zeros((2, 8, 8), np.uint16), 1, "2-D"),
        (np.zeros((8, 8), np.uint16), 0, "must increase, got 0 after 0"),
        (np.zeros((8, 8), np.uint16), -3, "int >= 0, got -3"),
    ],
)
def test_publish_refuses_bad_input(
    ctx: zmq.Context, pull: Callable, image: np.ndarray, frame: int, match: str
) -> None:
    _, endpoint = pull()
    with CameraPublisher(endpoint, "cam0", 0, context=ctx) as pub:
        pub.publish(0, np.zeros((8, 8), np.uint16))
        with pytest.raises(FormatError, match=match):
            pub.publish(frame, image)


def test_publish_refuses_nan_and_closed(ctx: zmq.Context, pull: Callable) -> None:
    _, endpoint = pull()
    pub = CameraPublisher(endpoint, "cam0", 0, context=ctx)
    bad = np.zeros((4, 4), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        pub.publish(0, bad)
    pub.close()
    with pytest.raises(StreamError, match="closed"):
        pub.publish(1, np.zeros((4, 4), np.float32))


@pytest.mark.timeout(60)
def test_stalled_service_publish_returns_and_counts_drops(ctx: zmq.Context, pull: Callable) -> None:
    """A bound socket that never reads: every publish returns quickly, drops are counted."""
    stalled, endpoint = pull(rcvhwm=4)
    pub = CameraPublisher(endpoint, "cam0", 0, sndhwm=4, linger_ms=0, context=ctx)
    image = np.ones((256, 256), np.uint16)
    attempts, results = 3000, []
    done = threading.Event()

    def acquisition() -> None:
        for i in range(attempts):
            results.append(pub.publish(i, image))
        done.set()

    threading.Thread(target=acquisition, daemon=True).start()
    # bounded: the whole loop finishes although nobody reads (a blocking send would hang)
    assert done.wait(45), f"publish blocked: only {len(results)} of {attempts} returned"
    pub.close()
    stats = pub.stats
    assert stats.dropped_total > 0
    assert stats.published + stats.dropped_total == attempts
    assert results.count(False) == stats.dropped["queue_full"]
    assert stats.last_frame == attempts - 1
    stalled.close()


def test_run_cameras_paces_all_planes(ctx: zmq.Context, pull: Callable) -> None:
    socks = [pull() for _ in range(4)]
    scene = Scene(SceneConfig(molecules=5))
    pubs = {k: CameraPublisher(ep, f"cam{k}", k, context=ctx) for k, (_, ep) in enumerate(socks)}
    sent = run_cameras(SimulatedSource(scene, range(4), start=7, frames=3), pubs, rate_hz=0)
    assert sent == 3
    for k, (sock, _) in enumerate(socks):
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        msgs = [decode_frame(sock.recv_multipart()) for _ in range(3)]
        assert [m.frame for m in msgs] == [7, 8, 9]
        assert {m.plane for m in msgs} == {k}
        assert msgs[0].image.shape == (64, 64) and msgs[0].image.dtype == np.float32
    for p in pubs.values():
        p.close()


def test_run_cameras_stops_on_event(ctx: zmq.Context, pull: Callable) -> None:
    _, endpoint = pull()
    stop = threading.Event()
    scene = Scene(SceneConfig(molecules=1))
    with CameraPublisher(endpoint, "cam0", 0, context=ctx) as pub:
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        t0 = time.monotonic()
        sent = run_cameras(SimulatedSource(scene, [0]), {0: pub}, rate_hz=20, stop=stop)
        assert time.monotonic() - t0 < 30
    assert 1 <= sent < 1000


def _clean_scene(misalign: bool) -> Scene:
    noiseless = SimSettings(noise=NoiseParams(poisson_rate=0.0, gaussian_var=0.0))
    cfg = SceneConfig(settings=noiseless, molecules=40, structure="uniform", seed=3)
    if not misalign:
        cfg.misalign = None
    return Scene(cfg)


def test_scene_registration_undoes_its_misalignment() -> None:
    """The service's warp with the scene's registration recovers the aligned images
    (checks the affine convention of docs/protocol.md Sec. 4 on both sides)."""
    shifted, aligned = _clean_scene(True), _clean_scene(False)
    cams, ref = shifted.frame(5), aligned.frame(5)
    assert np.allclose(cams[0], ref[0])  # camera 0 is the reference
    for k in (1, 2, 3):
        warp = PlaneWarp.from_registration(
            CameraRegistration(affine=shifted.registration()[k]), 64, 64
        )
        registered = warp.apply(cams[k])
        inner = (slice(4, -4), slice(4, -4))  # edges repeat pixels outside the camera
        raw_corr = np.corrcoef(cams[k][inner].ravel(), ref[k][inner].ravel())[0, 1]
        reg_corr = np.corrcoef(registered[inner].ravel(), ref[k][inner].ravel())[0, 1]
        assert reg_corr > 0.97, (k, reg_corr)
        assert reg_corr > raw_corr + 0.05, (k, raw_corr, reg_corr)


def test_scene_is_deterministic_per_frame_and_filaments_stay_in_view() -> None:
    a = Scene(SceneConfig(seed=4)).frame(11, [2])
    b = Scene(SceneConfig(seed=4)).frame(11, [2])
    assert np.array_equal(a[2], b[2])
    mol = Scene(SceneConfig(seed=4, molecules=200)).molecules(0)
    assert len(mol) > 100
    assert (mol[:, 0] > -100).all() and (mol[:, 0] < 64 * 192 + 100).all()
    assert (mol[:, 2] >= 0).all() and (mol[:, 2] < 1600).all()
    with pytest.raises(ValueError, match="structure"):
        SceneConfig(structure="blobs")  # type: ignore[arg-type]
