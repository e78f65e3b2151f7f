"""A real pymmcore-plus acquisition into a running service (issue 16, item 2).

``UniMMCore`` with pure-Python camera devices (no Micro-Manager install, no Java) runs an
MDA of 50 time points; :class:`clients.micromanager.MDAStream` pushes every image into
the service harness's pipeline. Two layouts: one 128x128 camera whose sensor holds the
four planes as quadrants, and four cores with one camera each, their MDAs running at
the same time. The frames are the simulator's, so they hold molecules. Acceptance: no
drop and no reject in ``/stats``, and the table ``voxloc record`` writes matches
``voxloc localize`` on the same frames within 1 nm.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polling
import pytest
import tifffile

pytest.importorskip("pymmcore_plus", reason="pymmcore-plus is a test dependency (.[test])")
import useq  # noqa: E402 (installed with pymmcore-plus)
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore  # noqa: E402

from clients.cli import main as voxloc  # noqa: E402
from clients.micromanager import CameraPlanes, MDAStream, SensorRegions, StreamState  # noqa: E402
from clients.record import record  # noqa: E402
from clients.subscriber import LocalizationSubscriber  # noqa: E402
from engines.io.loctable import TableMeta, read_table  # noqa: E402
from engines.io.streamtable import CsvStreamWriter  # noqa: E402

FRAMES = 50
THRESHOLD = 0.5
MODEL = "default"  # the shipped model: real molecules give real localizations


@pytest.fixture(autouse=True)
def _psygnal_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct (psygnal) MDA signals even when an earlier test left a QApplication: with
    Qt signals, pymmcore-plus queues frameReady to an event loop that no test runs."""
    monkeypatch.setenv("PYMM_SIGNALS_BACKEND", "psygnal")


class StackCamera(SimpleCameraDevice):
    """A camera whose n-th exposure returns ``images[n]``, ``(T, H, W)`` uint16."""

    def __init__(self, images: np.ndarray) -> None:
        super().__init__()
        self.images, self.exposed, self._exposure_ms = images, 0, 10.0

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._exposure_ms = exposure

    def sensor_shape(self) -> tuple[int, int]:
        return self.images.shape[1:]

    def dtype(self) -> np.dtype:
        return self.images.dtype

    def snap(self, buffer: np.ndarray) -> dict:
        buffer[:] = self.images[self.exposed % len(self.images)]
        self.exposed += 1
        return {}


def make_core(label: str, images: np.ndarray) -> UniMMCore:
    core = UniMMCore()
    core.loadPyDevice(label, StackCamera(images))
    core.initializeDevice(label)
    core.setCameraDevice(label)
    core.setAutoShutter(False)  # no shutter device: the MDA engine would refuse to run
    return core


@pytest.fixture(scope="module")
def adu_frames(sim_frames: tuple) -> np.ndarray:
    """``(FRAMES, 4, 64, 64)`` uint16 camera counts of simulated molecules."""
    return np.clip(np.round(sim_frames[0][:FRAMES]), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def offline_table(adu_frames: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    """``voxloc localize`` on the same frames, as a TZYX TIFF."""
    root = tmp_path_factory.mktemp("offline")
    tifffile.imwrite(root / "frames.tif", adu_frames, imagej=True, metadata={"axes": "TZYX"})
    argv = ["localize", str(root / "frames.tif"), "-o", str(root / "offline.csv"), "-q"]
    argv += ["--model", MODEL, "--backend", "torch", "--threshold", str(THRESHOLD)]
    assert voxloc(argv) == 0
    return read_table(root / "offline.csv")


def quadrants(frames: np.ndarray) -> np.ndarray:
    """``(T, 4, H, W)`` -> ``(T, 2H, 2W)``: plane k in tile k, row-major."""
    top = np.concatenate([frames[:, 0], frames[:, 1]], axis=2)
    bottom = np.concatenate([frames[:, 2], frames[:, 3]], axis=2)
    return np.concatenate([top, bottom], axis=1)


def one_sensor(frames: np.ndarray, stream_to: Callable) -> MDAStream:
    core = make_core("Splitter", quadrants(frames))
    stream = stream_to(SensorRegions.grid(128, 128, rows=2, cols=2)).attach(core)
    core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": FRAMES}))
    return stream


def four_cameras(frames: np.ndarray, stream_to: Callable) -> MDAStream:
    """Four cores, one camera each (as four acquisition PCs), sharing one stream."""
    cores = [make_core(f"Andor-{k}", frames[:, k]) for k in range(4)]
    stream = stream_to(CameraPlanes({f"Andor-{k}": k for k in range(4)}))
    for core in cores:
        stream.attach(core)
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": FRAMES})
    runs = [threading.Thread(target=core.mda.run, args=(seq,)) for core in cores]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
    return stream


@pytest.fixture
def recording(make_service: Callable, tmp_path: Path) -> Iterator[tuple]:
    """A service on the shipped model, and ``voxloc record``'s recorder on its stream."""
    svc = make_service(model=MODEL, threshold=THRESHOLD)
    sub = LocalizationSubscriber(svc.pipeline.publish_endpoint)
    svc_endpoints = {k: svc.endpoints[f"cam{k}"] for k in range(4)}
    meta = TableMeta(frames=0, height=64, width=64, px_nm=192.0, dz_nm=400.0, planes=4)
    out = tmp_path / "live.csv"
    writer = CsvStreamWriter(out, meta)
    polling.wait_for(lambda: svc.pipeline.publisher.subscribers >= 2, "recorder", 30)
    yield svc, sub, svc_endpoints, writer, out
    sub.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("layout", [one_sensor, four_cameras], ids=["one-sensor", "four-cameras"])
def test_mda_into_service_matches_offline(layout, recording, adu_frames, offline_table) -> None:
    svc, sub, endpoints, writer, out = recording
    result: dict = {}
    recorder = threading.Thread(
        target=lambda: result.update(r=record(sub, writer, max_frames=FRAMES, idle_timeout_s=60))
    )
    recorder.start()

    def stream_to(plane_layout):
        return MDAStream(plane_layout, endpoints=endpoints, sndhwm=2 * FRAMES)

    stream = layout(adu_frames, stream_to)
    recorder.join(120)
    stats = svc.stats()

    assert stream.state is StreamState.IDLE and stream.last_error is None
    assert stream.stats.published == 4 * FRAMES and stream.stats.dropped_total == 0
    assert stats["rejects"] == {}
    assert set(stats["assembler"]["dropped"].values()) == {0}
    assert stats["assembler"]["assembled"] == FRAMES and stats["batcher"]["dropped"] == 0
    assert result["r"].messages == FRAMES and result["r"].missed == 0
    assert_tables_match(read_table(out), offline_table)


def assert_tables_match(live, offline, tol_nm: float = 1.0) -> None:
    """Same localizations per frame within ``tol_nm``; a row only one side has must sit
    at the threshold (batch composition moves the last float bits)."""
    assert len(offline) > 5 * FRAMES, "the frames should hold molecules"
    for f in range(FRAMES):
        a, b = live.xyz_nm[live.frame == f], offline.xyz_nm[offline.frame == f]
        ca, cb = live.confidence[live.frame == f], offline.confidence[offline.frame == f]
        d = np.linalg.norm(a[:, None] - b[None], axis=-1) if len(a) and len(b) else None
        near_a = d.min(1) <= tol_nm if d is not None else np.zeros(len(a), bool)
        near_b = d.min(0) <= tol_nm if d is not None else np.zeros(len(b), bool)
        odd = np.concatenate([ca[~near_a], cb[~near_b]])
        assert np.all(np.abs(odd - THRESHOLD) < 1e-3), (
            f"frame {f}: {len(a)} live rows, {len(b)} offline; unmatched confidences {odd}"
        )
