"""Both ways of receiving the cameras (``[stream] ingest_threads``: one thread for every
camera, or one each, service/receivers.py) keep the ingest's rules: sets in order, a
camera far ahead held back instead of overflowing the assembly, connections seen while
idle; and ``auto`` picks as documented."""

from __future__ import annotations

import numpy as np
import pytest

from service.receivers import PER_CAMERA_MIN_FRAME_BYTES, ingest_mode
from service.settings import StreamSettings
from tests.service.conftest import Service, service_settings, wait_for

MODES = ["one", "per_camera"]


@pytest.fixture(params=MODES)
def rx_service(request: pytest.FixtureRequest):
    svc = Service(service_settings({"ingest_threads": request.param}))
    yield svc
    svc.close()


@pytest.fixture(params=MODES)
def small_window(request: pytest.FixtureRequest):
    """A window of 16 sets: a lead of more than 4 (window // 4) is held back."""
    svc = Service(service_settings({"ingest_threads": request.param, "window": 16}))
    yield svc
    svc.close()


def test_sets_arrive_in_order_and_stats_name_the_mode(rx_service: Service, sim_frames) -> None:
    frames = sim_frames[0]
    for i in range(40):
        rx_service.send_set(i, frames[i])
    got = rx_service.receive(40)
    assert [m.frame for m in got] == list(range(40))
    snap = rx_service.stats()
    assert snap["assembler"]["ingest_threads"] == rx_service.pipeline.ingest_mode
    assert snap["assembler"]["dropped"] == {} or sum(snap["assembler"]["dropped"].values()) == 0


def test_a_camera_far_ahead_waits_for_the_others(small_window: Service, sim_frames) -> None:
    """Every camera streams, then cam0 runs 45 frames ahead of the others: with a window
    of 16 sets an unchecked lead would overflow the assembly; held back in its socket
    (its frames wait there), nothing is lost."""
    frames = sim_frames[0]
    for i in range(3):
        small_window.send_set(i, frames[i])
    assert [m.frame for m in small_window.receive(3)] == [0, 1, 2]
    n = 48
    for i in range(3, n):
        small_window.send("cam0", 0, i, frames[i, 0])
    wait_for(lambda: small_window.stats()["cameras"]["cam0"]["frames_in"] >= 7, "cam0 read on")
    for i in range(3, n):
        for k in (1, 2, 3):
            small_window.send(f"cam{k}", k, i, frames[i, k])
    got = small_window.receive(n - 3, timeout_s=60)
    assert [m.frame for m in got] == list(range(3, n))
    assert sum(small_window.stats()["assembler"]["dropped"].values()) == 0
    assert small_window.stats()["cameras"]["cam0"]["frames_in"] == n


def test_idle_cameras_connections_are_seen(rx_service: Service) -> None:
    wait_for(
        lambda: {c["state"] for c in rx_service.stats()["cameras"].values()} == {"connected"},
        "every camera connected",
    )
    rx_service.cams["cam2"].close(linger=0)
    wait_for(
        lambda: rx_service.stats()["cameras"]["cam2"]["state"] == "disconnected",
        "cam2 disconnected",
    )


@pytest.mark.parametrize(
    ("side", "cores", "mode"),
    [
        (256, 64, "one"),  # small frames: one thread, whatever the cores
        (1024, 2, "one"),  # large frames on a small host
        (1024, 8, "one"),  # two cores per camera are not more than two
        (1024, 9, "per_camera"),
    ],
)
def test_auto_picks_per_camera_only_for_large_frames_on_many_cores(side, cores, mode) -> None:
    stream = StreamSettings(height=side, width=side)
    assert (side * side * 2 >= PER_CAMERA_MIN_FRAME_BYTES) == (side >= 1024)
    assert ingest_mode(stream, 4, cores=cores) == mode
    forced = StreamSettings(height=side, width=side, ingest_threads="per_camera")
    assert ingest_mode(forced, 4, cores=1) == "per_camera"


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="ingest_threads"):
        StreamSettings(ingest_threads="two")  # type: ignore[arg-type]


def test_frames_are_what_was_sent(rx_service: Service, sim_frames) -> None:
    """A set received in either mode localizes as the same frames do in the engine."""
    frames = sim_frames[0]
    rx_service.send_set(0, frames[0])
    (msg,) = rx_service.receive(1)
    engine = rx_service.pipeline.models.active.engine
    ref = engine.infer(frames[:1], rx_service.pipeline.config.threshold)[0]
    np.testing.assert_allclose(msg.locs.xyz_nm, ref.xyz_nm, atol=1e-3)


def test_a_burst_with_garbage_in_it_is_taken_whole(rx_service: Service, sim_frames) -> None:
    """Frames queued up in the sockets are taken several a round (one thread) or one a
    receive (per camera); garbage among them is refused and counted, the valid ones all
    make their sets, and every message counts as received."""
    frames = sim_frames[0]
    for i in range(30):
        rx_service.send_set(i, frames[i])
        if i % 7 == 3:
            rx_service.cams["cam1"].send_multipart([b"not msgpack", b"\x00" * 8])
    got = rx_service.receive(30)
    assert [m.frame for m in got] == list(range(30))
    snap = rx_service.stats()
    cams = snap["cameras"]
    assert cams["cam1"]["frames_in"] == 34 and cams["cam0"]["frames_in"] == 30
    assert sum(cams["cam1"]["rejects"].values()) == 4
