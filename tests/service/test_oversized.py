"""A camera message far larger than a frame costs the service no memory: the camera
socket refuses it (ZeroMQ MAXMSGSIZE) before reading it, and the stream goes on."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from service.wire import WIRE_VERSION

SENDER = textwrap.dedent(
    """
    import sys, time, msgpack, numpy as np, zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(sys.argv[1])
    n = 1 << 30  # 1 GiB of zeros (calloc: the sender's pages stay unmapped)
    header = msgpack.packb({"v": int(sys.argv[2]), "kind": "frame", "source": "cam1", "plane": 1,
        "frame": 0, "t_ns": 1, "dtype": "uint16", "shape": [64, 64]})
    s.send_multipart([header, np.zeros(n, np.uint8)], copy=False)
    time.sleep(3)
    s.close(linger=0)
    """
)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.timeout(120)
def test_a_1_gib_message_costs_no_memory(service: Any, sim_frames: tuple) -> None:
    frames = sim_frames[0]
    before = max_rss_mb()
    subprocess.run(
        [sys.executable, "-c", SENDER, service.endpoints["cam1"], str(WIRE_VERSION)],
        check=True,
        timeout=60,
    )
    assert max_rss_mb() - before < 200, "the service read the oversized message into memory"
    for i in range(5):
        service.send_set(i, frames[i])
    msgs = service.receive(5)
    assert [m.frame for m in msgs] == list(range(5))
    assert service.stats()["state"] == "running"
