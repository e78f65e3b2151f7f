"""Fixtures of the client tests: ZeroMQ sockets on random ports, a running demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest
import yaml
import zmq

from clients.commands.demo import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


class Demo:
    """A running ``voxloc demo`` subprocess and its ports."""

    def __init__(self, api_port: int, locs_port: int, proc: subprocess.Popen, log: Path) -> None:
        self.url = f"http://127.0.0.1:{api_port}"
        self.locs_endpoint = f"tcp://127.0.0.1:{locs_port}"
        self.proc = proc
        self.log = log


@pytest.fixture(scope="package")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``voxloc demo`` on free ports for the whole package (model load takes a while)."""
    api_port, locs_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clients.cli",
                "demo",
                "--port",
                str(api_port),
                "--locs-port",
                str(locs_port),
                "--rate",
                "10",
                "--duration",
                "600",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    d = Demo(api_port, locs_port, proc, log)
    try:
        _wait_streaming(d, timeout_s=180)
        yield d
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_streaming(d: Demo, timeout_s: float) -> None:
    """Until the service is ready and frame sets are being published."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            pytest.fail(f"voxloc demo exited with {d.proc.returncode}:\n{d.log.read_text()}")
        try:
            stats = httpx.get(f"{d.url}/stats", timeout=2).json()
            if stats.get("publisher", {}).get("published", 0) > 0:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"demo not streaming after {timeout_s} s:\n{d.log.read_text()}")


def check_picasso(path: Path, frames_at_least: int) -> None:
    """The Picasso HDF5 layout: locs fields/dtypes (x, y in px) and the yaml keys."""
    with h5py.File(path, "r") as f:
        locs = f["locs"]
        dt = locs.dtype
        assert dt["frame"] == np.dtype("u4")
        for name in ("x", "y", "z", "confidence", "photons", "bg", "lpx", "lpy", "lpz"):
            assert dt[name] == np.dtype("f4"), name
        rec = locs[...]
    docs = list(yaml.safe_load_all(path.with_suffix(".yaml").read_text()))
    merged = {k: v for d in docs for k, v in d.items()}
    for key in ("Frames", "Height", "Width", "Pixelsize", "Byte Order", "Data Type"):
        assert key in merged, key
    assert merged["Frames"] >= frames_at_least
    assert merged["Frames"] > int(rec["frame"].max())
    assert (rec["x"] >= -1).all() and (rec["x"] < merged["Width"] + 1).all()  # pixels
    assert (rec["y"] >= -1).all() and (rec["y"] < merged["Height"] + 1).all()


@pytest.fixture
def picasso_check():
    return check_picasso
