"""The dashboard router under a real uvicorn server, fed by a real XPUB socket."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import polling
import pytest
import uvicorn
import zmq
from fastapi import FastAPI
from PIL import Image

from clients.commands.demo import free_port
from clients.dashboard import create_router
from engines.types import Localizations
from service.wire import LocsMessage, encode_locs


@pytest.fixture
def served(ctx: zmq.Context) -> Iterator[tuple[str, zmq.Socket, object]]:
    """uvicorn serving only the dashboard router; an XPUB socket as the service's stream."""
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    router = create_router(endpoint.replace("127.0.0.1", "*"), interval_s=0.2)
    app = FastAPI()
    app.include_router(router)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    polling.wait_for(lambda: server.started, "uvicorn to start", 20, interval_s=0.05)
    assert pub.poll(10_000), "the dashboard never subscribed"
    pub.recv()
    yield f"http://127.0.0.1:{port}", pub, router.live  # type: ignore[attr-defined]
    server.should_exit = True
    thread.join(10)


def _message(seq: int, n: int) -> list:
    xyz = np.column_stack(
        [np.full(n, 1000.0 + seq % 100), np.full(n, 2000.0), np.full(n, 1200.0)]
    ).astype(np.float32)
    return encode_locs(
        LocsMessage(
            "voxloc",
            seq,
            seq,
            "default",
            "1",
            0.5,
            0,
            0,
            0,
            Localizations(seq, xyz, np.ones(n, np.float32)),
        )
    )


@pytest.mark.timeout(60)
def test_bins_a_fast_stream_and_sends_few_rendered_updates(served) -> None:
    url, pub, live = served
    first_version = live.snapshot.version
    for seq in range(3000):  # far faster than any camera: the dashboard must not fall behind
        pub.send_multipart(_message(seq, 5))
    polling.wait_for(
        lambda: live.frames >= 3000 and live.snapshot.info.get("frames") == 3000,
        "3000 frame sets binned and rendered",
        30,
        interval_s=0.05,
    )
    assert live.missed == 0 and live.hist.total == 15_000
    renders = live.snapshot.version - first_version
    assert 1 <= renders < 300  # rendered images at a bounded rate, never one per message
    png = httpx.get(f"{url}/dashboard/image.png")
    img = np.asarray(Image.open(io.BytesIO(png.content)))
    row, col = int(2000 / 24), int(1050 / 24)
    assert img[row, col].sum() > 0  # the localizations are where they should be
    info = httpx.get(f"{url}/dashboard/info").json()
    assert info["nm_per_px"] == 24.0 and len(info["colorbar"]) == 11
    assert info["endpoint"].startswith("tcp://*:")


@pytest.mark.timeout(60)
def test_event_stream_pushes_rendered_images(served) -> None:
    url, pub, _live = served
    pub.send_multipart(_message(0, 50))
    with httpx.stream("GET", f"{url}/dashboard/events", timeout=20) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        event, data = None, None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "image":
                data = json.loads(line[6:])
                if data["localizations"] >= 50:
                    break
    assert data is not None and data["frames"] == 1 and data["model"] == "default"
    img = Image.open(io.BytesIO(base64.b64decode(data["png"])))
    assert img.size == (data["width"], data["height"]) == (512, 512)


def test_page_and_assets_are_served_locally(served) -> None:
    url, _pub, _live = served
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "voxloc live" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from a CDN
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        resp = httpx.get(f"{url}/dashboard/static/{name}")
        assert resp.status_code == 200 and ctype in resp.headers["content-type"]
    assert httpx.get(f"{url}/dashboard/static/secret.txt").status_code == 404
    assert httpx.post(f"{url}/dashboard/reset").json()["reset"] is True
