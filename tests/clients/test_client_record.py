"""Subscriber gap detection and ``voxloc record`` (flushing, SIGKILL, Picasso format)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import polling
import pytest
import zmq

from clients.record import open_stream_writer, record
from clients.subscriber import (
    AsyncLocalizationSubscriber,
    LocalizationSubscriber,
    connect_endpoint,
)
from engines.io.loctable import TableMeta, read_hdf5, read_table
from engines.types import Localizations
from service.wire import LocsMessage, encode_locs

REPO = Path(__file__).resolve().parents[2]
META = TableMeta(frames=0, height=64, width=64, px_nm=192.0, dz_nm=400.0, planes=4)


def locs_message(seq: int, frame: int, n: int) -> LocsMessage:
    rng = np.random.default_rng(frame)
    xyz = (rng.random((n, 3)) * [12288, 12288, 1600]).astype(np.float32)
    conf = np.full(n, 0.5 + (frame % 50) / 100, np.float32)
    photons = rng.uniform(500, 5000, n).astype(np.float32)
    background = rng.uniform(2, 30, n).astype(np.float32)
    precision = rng.uniform(4, 40, (n, 3)).astype(np.float32)
    locs = Localizations(frame, xyz, conf, photons, background, precision)
    return LocsMessage("voxloc", seq, frame, "default", "1", 0.5, 1, 2, 3, locs)


@pytest.fixture
def xpub(ctx: zmq.Context) -> Iterator[tuple[zmq.Socket, str]]:
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()


def wait_subscribed(sock: zmq.Socket, timeout_s: float = 10.0) -> None:
    assert sock.poll(int(timeout_s * 1000)), "no subscriber connected"
    sock.recv()  # the subscription message


def test_connect_endpoint_rewrites_wildcards() -> None:
    assert connect_endpoint("tcp://*:5560") == "tcp://127.0.0.1:5560"
    assert connect_endpoint("tcp://0.0.0.0:5560") == "tcp://127.0.0.1:5560"
    assert connect_endpoint("ipc:///tmp/x") == "ipc:///tmp/x"


def test_subscriber_counts_gaps_and_restarts(ctx: zmq.Context, xpub) -> None:
    sock, endpoint = xpub
    with LocalizationSubscriber(endpoint, context=ctx) as sub:
        wait_subscribed(sock)
        for seq in (0, 1, 2, 5, 6, 9, 0, 1):  # lost 3-4 and 7-8, then a service restart
            sock.send_multipart(encode_locs(locs_message(seq, seq * 2, 3)))
        sock.send_multipart([b"garbage", b""])
        got = [sub.recv(5.0) for _ in range(8)]
        assert sub.recv(0.2) is None  # the garbage message is skipped, not yielded
    assert [m.seq for m in got] == [0, 1, 2, 5, 6, 9, 0, 1]
    assert sub.gaps.missed == 4 and sub.gaps.restarts == 1 and sub.bad_messages == 1
    assert [(g.first_seq, g.last_seq, g.after_frame) for g in sub.gaps.gaps] == [
        (3, 4, 4),
        (7, 8, 12),
    ]
    assert np.allclose(got[3].locs.xyz_nm, locs_message(5, 10, 3).locs.xyz_nm)


@pytest.mark.timeout(30)
def test_async_subscriber_yields_in_order_and_sees_gaps(xpub) -> None:
    sock, endpoint = xpub

    async def main() -> tuple[list[int], int]:
        sub = AsyncLocalizationSubscriber(endpoint)
        await asyncio.get_running_loop().run_in_executor(None, wait_subscribed, sock)
        for seq in (0, 1, 3):
            sock.send_multipart(encode_locs(locs_message(seq, seq, 1)))
        seqs = []
        async for msg in sub:
            seqs.append(msg.seq)
            if len(seqs) == 3:
                break
        sub.close()
        return seqs, sub.gaps.missed

    seqs, missed = asyncio.run(asyncio.wait_for(main(), 20))
    assert seqs == [0, 1, 3] and missed == 1


@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_record_writes_every_frame_in_format(
    ctx: zmq.Context, xpub, tmp_path: Path, suffix: str
) -> None:
    sock, endpoint = xpub
    out = tmp_path / f"rec{suffix}"
    sent = [locs_message(i, i, i % 4) for i in range(40)]  # frames with 0 locs too
    with LocalizationSubscriber(endpoint, context=ctx) as sub:
        wait_subscribed(sock)
        for m in sent:
            sock.send_multipart(encode_locs(m))
        result = record(sub, open_stream_writer(out, META), max_frames=40)
    assert (result.messages, result.frames, result.missed) == (40, 40, 0)
    table = read_table(out)
    rows = np.concatenate([m.locs.to_array() for m in sent])
    assert len(table) == result.rows == len(rows)
    assert np.array_equal(table.frame, rows[:, 0].astype(int))
    assert np.allclose(table.xyz_nm, rows[:, 1:4], atol=0.01)
    assert np.allclose(table.confidence, rows[:, 4], atol=1e-4)
    # photometry and precision travel over the wire into the file
    assert np.allclose(table.photons, rows[:, 5], atol=0.05)
    assert np.allclose(table.background, rows[:, 6], atol=5e-4)
    assert np.allclose(table.precision_nm, rows[:, 7:10], atol=5e-3)


@pytest.fixture
def spawn_record() -> Iterator[Callable[[Path, str], subprocess.Popen]]:
    """Factory: ``spawn_record(out, endpoint, *args)`` starts ``voxloc record``; killed if still
    running and its pipe closed after the test."""
    procs: list[subprocess.Popen] = []

    def spawn(out: Path, endpoint: str, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "clients.cli", "record", "-o", str(out), *extra]
        procs.append(
            subprocess.Popen(
                [*cmd, "--endpoint", endpoint],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        return procs[-1]

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def _frames_on_disk(out: Path) -> int:
    try:
        if out.suffix == ".csv":
            return len(set(read_table(out).frame.tolist()))
        with h5py.File(out, "r", locking=False) as f:
            return len(set(f["locs"]["frame"].tolist()))
    except (OSError, ValueError, KeyError):
        return -1  # not there yet / mid-write


def _wait_frames(out: Path, n: int, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    def written() -> bool:
        assert proc.poll() is None, proc.stdout.read().decode()
        return _frames_on_disk(out) >= n

    polling.wait_for(written, f"{n} frames written to {out.name}", timeout_s, interval_s=0.05)


def _wait_subscriber_up(sock: zmq.Socket, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not sock.poll(100):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "recorder never subscribed"
    sock.recv()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_sigkilled_recording_keeps_every_frame_written(
    xpub, spawn_record, tmp_path: Path, suffix: str, picasso_check
) -> None:
    """Frames the recorder had written survive SIGKILL, as complete frames."""
    sock, endpoint = xpub
    out = tmp_path / f"killed{suffix}"
    proc = spawn_record(out, endpoint)
    _wait_subscriber_up(sock, proc)
    for i in range(30):
        sock.send_multipart(encode_locs(locs_message(i, i, 1 + i % 3)))
    _wait_frames(out, 30, proc)  # every frame with rows is on disk...
    proc.send_signal(signal.SIGKILL)  # ...and nothing closes the file
    proc.wait(10)
    table = read_table(out) if suffix == ".csv" else read_hdf5(out)[0]
    assert sorted(set(table.frame.tolist())) == list(range(30))
    expected = np.concatenate([locs_message(i, i, 1 + i % 3).locs.to_array() for i in range(30)])
    assert np.allclose(table.xyz_nm, expected[:, 1:4], atol=0.01)
    if suffix == ".h5":
        deadline = time.monotonic() + 5
        picasso_check(out, frames_at_least=0)
        assert time.monotonic() < deadline


@pytest.mark.timeout(90)
def test_csv_killed_while_streaming_keeps_a_complete_prefix(
    xpub, spawn_record, tmp_path: Path
) -> None:
    """SIGKILL at an arbitrary moment of a live stream: the CSV holds whole frames 0..k."""
    sock, endpoint = xpub
    out = tmp_path / "live.csv"
    proc = spawn_record(out, endpoint)
    _wait_subscriber_up(sock, proc)
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            sock.send_multipart(encode_locs(locs_message(i, i, 2 + i % 5)))
            i += 1
            time.sleep(0.002)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    _wait_frames(out, 100, proc)
    seen = _frames_on_disk(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop.set()
    t.join(5)
    table = read_table(out)
    frames = table.frame
    k = int(frames.max())
    assert k + 1 >= seen
    assert sorted(set(frames.tolist())) == list(range(k + 1))
    counts = np.bincount(frames)
    assert all(counts[i] == 2 + i % 5 for i in range(k + 1))  # no partial frame


def test_record_cli_stops_on_sigint_and_summarises(
    xpub, spawn_record, tmp_path: Path, picasso_check
) -> None:
    sock, endpoint = xpub
    out = tmp_path / "cli.h5"
    proc = spawn_record(out, endpoint)
    _wait_subscriber_up(sock, proc)
    for i in range(5):
        sock.send_multipart(encode_locs(locs_message(i, i, 2)))
    _wait_frames(out, 5, proc)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, text
    assert "wrote 10 localizations from 5 frame sets" in text
    picasso_check(out, frames_at_least=5)


def test_recording_with_the_model_has_its_psf_width_for_picasso(
    xpub, spawn_record, tmp_path: Path
) -> None:
    pio = pytest.importorskip("picasso.io", reason="picassosr is a test dependency")
    sock, endpoint = xpub
    out = tmp_path / "rec.csv"
    proc = spawn_record(out, endpoint, "--model", "default")
    _wait_subscriber_up(sock, proc)
    sent = [locs_message(i, i, 3) for i in range(5)]
    for m in sent:
        sock.send_multipart(encode_locs(m))
    _wait_frames(out, 5, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.communicate(timeout=30)[0] and proc.returncode == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[-2:] == ["sigma1 [nm]", "sigma2 [nm]"]
    locs, _ = pio.import_ts(str(out), 192.0)  # Picasso's ThunderSTORM import takes it
    photons = np.concatenate([m.locs.photons for m in sent])
    assert len(locs) == 15 and np.allclose(np.sort(locs["photons"]), np.sort(photons), atol=1)
    assert (locs["sx"] * 192.0).between(130, 170).all()  # the model PSF's width, nm


def test_stream_writer_refuses_bad_paths(tmp_path: Path) -> None:
    from engines.errors import VoxlocError

    with pytest.raises(VoxlocError, match="does not exist"):
        open_stream_writer(tmp_path / "nope" / "x.csv", META)
    with pytest.raises(VoxlocError, match="unknown table format"):
        open_stream_writer(tmp_path / "x.txt", META)
    assert not os.path.exists(tmp_path / "x.txt")
