"""``voxloc camera`` from the command line: TIFF replay and simulated single cameras."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zmq

from clients.cli import main
from service.wire import decode_frame


def _voxloc(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the real ``voxloc`` entry point in this process."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def pulls(ctx: zmq.Context) -> Iterator[Callable[[int], list[tuple[zmq.Socket, str]]]]:
    """Factory: ``pulls(n)`` binds n PULL sockets to random ports; closed after the test."""
    socks: list[zmq.Socket] = []

    def make(n: int) -> list[tuple[zmq.Socket, str]]:
        out = []
        for _ in range(n):
            sock = ctx.socket(zmq.PULL)
            socks.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
            out.append((sock, f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"))
        return out

    yield make
    for sock in socks:
        sock.close(linger=0)


@pytest.mark.parametrize(
    "layout",
    [{"photometric": "minisblack"}, {"photometric": "rgb", "planarconfig": "separate"}],
    ids=["page-per-frame", "frames-as-samples"],
)
def test_camera_replays_per_camera_tiff_stacks(
    pulls: Callable, tmp_path: Path, layout: dict, capsys
) -> None:
    stacks = [np.arange(3 * 8 * 6, dtype=np.uint16).reshape(3, 8, 6) + 1000 * k for k in range(2)]
    paths = []
    for k, stack in enumerate(stacks):
        paths.append(tmp_path / f"cam{k}.tif")
        tifffile.imwrite(paths[-1], stack, **layout)
    socks = pulls(2)
    code, out, err = _voxloc(
        capsys,
        "camera",
        "--tiff",
        *map(str, paths),
        "--rate",
        "0",
        "--start-frame",
        "5",
        *[a for _, ep in socks for a in ("--endpoint", ep)],
    )
    assert code == 0, err
    assert "sent 3 frame sets" in out
    for k, (sock, _) in enumerate(socks):
        msgs = [decode_frame(sock.recv_multipart()) for _ in range(3)]
        assert [m.frame for m in msgs] == [5, 6, 7]
        assert all(m.source == f"cam{k}" and m.plane == k for m in msgs)
        assert all(np.array_equal(m.image, stacks[k][i]) for i, m in enumerate(msgs))


def test_camera_simulates_one_plane_and_writes_registration(
    pulls: Callable, tmp_path: Path, capsys
) -> None:
    ((sock, ep),) = pulls(1)
    reg = tmp_path / "reg.json"
    code, _, err = _voxloc(
        capsys,
        "camera",
        "--plane",
        "2",
        "--endpoint",
        ep,
        "--frames",
        "2",
        "--rate",
        "0",
        "--height",
        "32",
        "--width",
        "40",
        "--registration-out",
        str(reg),
    )
    assert code == 0, err
    msgs = [decode_frame(sock.recv_multipart()) for _ in range(2)]
    assert [(m.source, m.plane, m.frame) for m in msgs] == [("cam2", 2, 0), ("cam2", 2, 1)]
    assert msgs[0].image.shape == (32, 40) and msgs[0].image.dtype == np.float32
    cams = json.loads(reg.read_text())["cameras"]
    assert sorted(cams) == ["cam0", "cam1", "cam2", "cam3"]
    assert cams["cam0"]["affine"] == [[1, 0, 0], [0, 1, 0]]
    assert np.asarray(cams["cam2"]["affine"]).shape == (2, 3)


def test_camera_cli_rejects_mismatched_stacks(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cam0.tif"
    tifffile.imwrite(path, np.zeros((2, 4, 4), np.uint16), photometric="minisblack")
    code, _, err = _voxloc(capsys, "camera", "--tiff", str(path), "--plane", "0", "--plane", "1")
    assert code == 2 and "1 TIFF stacks for planes [0, 1]" in err
