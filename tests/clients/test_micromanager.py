"""clients.micromanager against real pymmcore-plus MDAs and real ZeroMQ sockets.

The acquisition into a running service, matched against ``voxloc localize``, is
tests/service/test_mm_acquisition.py; here: layouts, frame indices, lifecycle, the
refusal of MDAs that are not time-lapses, and drops when nobody receives.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zmq

pytest.importorskip("pymmcore_plus", reason="pymmcore-plus is a test dependency (.[test])")
import useq  # noqa: E402
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore  # noqa: E402

from clients.micromanager import CameraPlanes, MDAStream, SensorRegions, StreamState  # noqa: E402
from engines.errors import FormatError  # noqa: E402
from service.wire import decode_frame  # noqa: E402


@pytest.fixture(autouse=True)
def _psygnal_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct (psygnal) MDA signals even when an earlier test left a QApplication: with
    Qt signals, pymmcore-plus queues frameReady to an event loop that no test runs."""
    monkeypatch.setenv("PYMM_SIGNALS_BACKEND", "psygnal")


class CountingCamera(SimpleCameraDevice):
    """Exposure n fills the sensor with ``n`` plus a per-pixel ramp."""

    def __init__(self, shape: tuple[int, int] = (16, 24), dtype: str = "uint16") -> None:
        super().__init__()
        self._shape, self._dtype, self.exposed = shape, np.dtype(dtype), 0

    def get_exposure(self) -> float:
        return 1.0

    def set_exposure(self, exposure: float) -> None:
        pass

    def sensor_shape(self) -> tuple[int, int]:
        return self._shape

    def dtype(self) -> np.dtype:
        return self._dtype

    def snap(self, buffer: np.ndarray) -> dict:
        buffer[:] = (np.arange(buffer.size).reshape(buffer.shape) + self.exposed) % 200
        self.exposed += 1
        return {}


def make_core(label: str = "Cam", **camera: object) -> UniMMCore:
    core = UniMMCore()
    core.loadPyDevice(label, CountingCamera(**camera))
    core.initializeDevice(label)
    core.setCameraDevice(label)
    core.setAutoShutter(False)
    return core


def pulls(ctx: zmq.Context, planes: int) -> tuple[dict[int, zmq.Socket], dict[int, str]]:
    socks, endpoints = {}, {}
    for k in range(planes):
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        socks[k], endpoints[k] = s, f"tcp://127.0.0.1:{port}"
    return socks, endpoints


def drain(sock: zmq.Socket, n: int) -> list:
    out = []
    while len(out) < n and sock.poll(5000):
        out.append(decode_frame(sock.recv_multipart()))
    return out


def time_lapse(n: int) -> useq.MDASequence:
    return useq.MDASequence(time_plan={"interval": 0, "loops": n})


def test_grid_regions_and_order() -> None:
    g = SensorRegions.grid(128, 256, rows=2, cols=2, order=[3, 2, 1, 0])
    assert g.regions == ((128, 64, 128, 64), (0, 64, 128, 64), (128, 0, 128, 64), (0, 0, 128, 64))
    with pytest.raises(ValueError, match="does not split"):
        SensorRegions.grid(127, 128)
    with pytest.raises(ValueError, match="permutation"):
        SensorRegions.grid(128, 128, order=[0, 0, 1, 2])
    with pytest.raises(ValueError, match="same width"):
        SensorRegions(((0, 0, 8, 8), (8, 0, 4, 8)))
    with pytest.raises(ValueError, match="distinct"):
        CameraPlanes({"a": 0, "b": 0})
    with pytest.raises(FormatError, match="does not fit"):
        SensorRegions.grid(64, 64).split(np.zeros((32, 32), np.uint16), "Cam")


def test_one_sensor_four_planes_indices_from_the_mda(ctx: zmq.Context) -> None:
    socks, endpoints = pulls(ctx, 4)
    core = make_core(shape=(16, 24))
    stream = MDAStream(SensorRegions.grid(16, 24), endpoints=endpoints).attach(core)
    core.mda.run(time_lapse(5))
    got = {k: drain(s, 5) for k, s in socks.items()}
    assert stream.state is StreamState.IDLE and stream.publishers == {}
    assert stream.stats.published == 20 and stream.stats.sequences == 1
    ramp = np.arange(16 * 24).reshape(16, 24)
    for k, msgs in got.items():
        assert [m.frame for m in msgs] == list(range(5))
        assert {(m.source, m.plane, m.image.shape) for m in msgs} == {(f"cam{k}", k, (8, 12))}
        r, c = divmod(k, 2)
        for t, m in enumerate(msgs):
            want = (ramp + t) % 200
            assert np.array_equal(m.image, want[8 * r : 8 * r + 8, 12 * c : 12 * c + 12])
    for s in socks.values():
        s.close()


def test_camera_planes_ignore_other_cameras_and_continue_frames(ctx: zmq.Context) -> None:
    socks, endpoints = pulls(ctx, 2)
    cores = [make_core("Left"), make_core("Right"), make_core("Focus")]
    stream = MDAStream(
        CameraPlanes({"Left": 0, "Right": 1}), endpoints=endpoints, continue_frames=True
    )
    for core in cores:
        stream.attach(core)
    for _ in range(2):  # two acquisitions, numbered on
        for core in cores:  # one after the other: the stream opens and closes each time
            core.mda.run(time_lapse(3))
    assert stream.stats.ignored == 6
    for k in range(2):
        # one socket per acquisition: the receiver fair-queues them, so sort
        assert sorted(m.frame for m in drain(socks[k], 6)) == [0, 1, 2, 3, 4, 5]
    stream.close()
    cores[0].mda.run(time_lapse(2))  # detached: nothing more goes out
    assert stream.stats.published == 12
    for s in socks.values():
        s.close()


def test_refuses_an_mda_that_is_not_a_time_lapse(ctx: zmq.Context, caplog) -> None:
    socks, endpoints = pulls(ctx, 1)
    core = make_core()
    stream = MDAStream(CameraPlanes({"Cam": 0}), endpoints=endpoints).attach(core)
    z_stack = useq.MDASequence(
        time_plan={"interval": 0, "loops": 2}, z_plan={"range": 2, "step": 1}
    )
    with caplog.at_level(logging.ERROR, logger="clients.micromanager"):
        core.mda.run(z_stack)
    assert stream.state is StreamState.FAILED and "further axes {'z': 3}" in stream.last_error
    assert "not streaming this acquisition" in caplog.text
    assert stream.stats.published == 0 and not socks[0].poll(100)
    core.mda.run(time_lapse(2))  # the next, proper acquisition streams again
    assert stream.state is StreamState.IDLE and stream.stats.published == 2
    socks[0].close()


def test_service_not_keeping_up_drops_counts_and_warns(caplog) -> None:
    core = make_core()
    # nobody listens on this endpoint: the send queue fills after sndhwm images
    stream = MDAStream(CameraPlanes({"Cam": 0}), endpoints={0: "tcp://127.0.0.1:9"}, sndhwm=2)
    stream.attach(core)
    with caplog.at_level(logging.WARNING, logger="clients.micromanager"):
        core.mda.run(time_lapse(20))
    assert stream.stats.images == 20
    assert stream.stats.dropped[0] == stream.stats.dropped_total >= 10
    assert stream.stats.published + stream.stats.dropped_total == 20
    assert "voxloc is not keeping up with the acquisition" in caplog.text
    assert "dropped because the service did not keep up" in caplog.text


def test_images_of_a_wrong_size_stop_the_stream_not_the_acquisition(ctx, caplog) -> None:
    socks, endpoints = pulls(ctx, 4)
    core = make_core(shape=(16, 16))
    stream = MDAStream(SensorRegions.grid(32, 32), endpoints=endpoints).attach(core)
    frames: list = []
    core.mda.events.frameReady.connect(lambda *_: frames.append(1))
    with caplog.at_level(logging.ERROR, logger="clients.micromanager"):
        core.mda.run(time_lapse(3))
    assert len(frames) == 3  # the acquisition went on
    assert stream.state is StreamState.FAILED and stream.stats.errors == 1
    assert "does not fit in its 16x16 image" in stream.last_error
    for s in socks.values():
        s.close()
