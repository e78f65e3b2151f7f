"""Registration (against scipy) and frame-set assembly (order, duplicates, timeouts)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from service.aligner import PlaneWarp
from service.assembler import FrameAssembler
from service.stats import ServiceStats
from service.wire import Reject


def scipy_register(img: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Independent reference: sample the camera image at A^-1 of each reference centre."""
    inv = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
    # (row, col) index space: x = j + 0.5, y = i + 0.5
    matrix = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
    offset = [
        0.5 * (inv[1, 0] + inv[1, 1]) + inv[1, 2] - 0.5,
        0.5 * (inv[0, 0] + inv[0, 1]) + inv[0, 2] - 0.5,
    ]
    return ndi.affine_transform(
        img.astype(np.float64), matrix, offset=offset, order=1, mode="nearest"
    )


@pytest.mark.parametrize(
    "affine",
    [
        [[1, 0, 2.25], [0, 1, -1.5]],
        [[np.cos(0.1), -np.sin(0.1), 3.0], [np.sin(0.1), np.cos(0.1), -2.0]],
        [[1.05, 0.02, -0.3], [-0.01, 0.97, 0.6]],
    ],
)
def test_bilinear_warp_matches_scipy(affine: list) -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1000, (40, 48)).astype(np.float32)
    warp = PlaneWarp(affine=np.asarray(affine), height=40, width=48)
    got = warp.apply(img)
    want = scipy_register(img, np.asarray(affine, dtype=np.float64))
    assert got.dtype == np.float32 and got.shape == (40, 48)
    np.testing.assert_allclose(got, want, atol=0.05)


def test_integer_shift_moves_pixels_and_converts_adu() -> None:
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) + 100
    warp = PlaneWarp(
        affine=np.array([[1, 0, 3], [0, 1, -2]]),
        height=64,
        width=64,
        gain_adu=2.0,
        baseline_adu=100.0,
    )
    out = warp.apply(img)
    # reference pixel (i, j) shows camera pixel (i + 2, j - 3)
    np.testing.assert_allclose(out[10, 20], (img[12, 17] - 100.0) / 2.0)
    ident = PlaneWarp(
        affine=np.array([[1, 0, 0], [0, 1, 0]]),
        height=64,
        width=64,
        gain_adu=2.0,
        baseline_adu=100.0,
    )
    assert ident.identity
    np.testing.assert_array_equal(ident.apply(img), (img.astype(np.float32) - 100) / 2)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def assembler(clock: FakeClock, planes: int = 3, window: int = 8) -> FrameAssembler:
    return FrameAssembler(
        planes=planes,
        height=2,
        width=2,
        timeout_s=1.0,
        window=window,
        stats=ServiceStats(["c"]),
        clock=clock,
    )


def put(asm: FrameAssembler, plane: int, frame: int) -> Reject | None:
    reason = asm.check(plane, frame)
    if reason is None:
        asm.slot(plane, frame, t_cam_ns=frame)[:] = frame * 10 + plane
        asm.commit(plane, frame, t_cam_ns=frame)
    return reason


def test_out_of_order_and_duplicates_release_in_frame_order() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    for plane, frame in [(2, 1), (0, 1), (1, 1), (2, 0), (1, 0)]:
        assert put(asm, plane, frame) is None
    assert asm.pop_ready() == []  # frame 0 lacks plane 0, frame 1 waits behind it
    assert put(asm, 2, 0) is Reject.DUPLICATE
    assert put(asm, 0, 0) is None
    sets = asm.pop_ready()
    assert [s.frame for s in sets] == [0, 1]
    assert sets[1].planes[:, 0, 0].tolist() == [10, 11, 12]
    assert put(asm, 0, 1) is Reject.DUPLICATE  # its set was released complete
    assert asm.stats.assembled == 2


def test_incomplete_and_missing_sets_time_out_and_are_counted() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    for p in range(3):
        put(asm, p, 0)
    asm.pop_ready()
    put(asm, 0, 1)  # frame 1: one plane only
    for p in range(3):
        put(asm, p, 4)  # frames 2, 3: nothing at all
    clock.t = 0.5
    assert asm.pop_ready() == []
    clock.t = 1.01
    assert [s.frame for s in asm.pop_ready()] == [4]
    assert asm.stats.set_drops["timeout"] == 1 and asm.stats.set_drops["missing"] == 2
    assert put(asm, 1, 1) is Reject.STALE  # too late: its set was dropped


def test_time_blocked_downstream_does_not_count_towards_the_timeout() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    put(asm, 0, 0)
    clock.t = 5.0
    asm.pause(4.5)
    assert asm.pop_ready() == [] and asm.depth == 1
    put(asm, 1, 0)
    put(asm, 2, 0)
    assert [s.frame for s in asm.pop_ready()] == [0]


def test_window_overflow_drops_the_oldest() -> None:
    clock = FakeClock()
    asm = assembler(clock, window=2)
    put(asm, 0, 0)
    put(asm, 0, 1)
    for p in range(3):
        put(asm, p, 2)
    assert asm.pop_ready() == []  # 3 pending > window 2: frame 0 dropped
    assert asm.stats.set_drops["overflow"] == 1 and asm.depth == 2
    put(asm, 0, 3)
    assert [s.frame for s in asm.pop_ready()] == [2]
    assert asm.stats.set_drops["overflow"] == 2 and asm.depth == 1


def test_a_set_dropped_while_a_copy_is_in_flight_frees_its_buffer_after_the_copy() -> None:
    clock = FakeClock()
    asm = assembler(clock, window=1)
    p, view = asm.reserve(0, 0, t_cam_ns=0, dtype=np.dtype(np.float32))
    assert asm.check(0, 0) is Reject.DUPLICATE  # the plane counts as arrived
    for k in range(3):
        put(asm, k, 1)
    for k in range(3):
        put(asm, k, 2)
    assert [s.frame for s in asm.pop_ready()] == [1, 2]  # frame 0 dropped: overflow
    free = asm.pool.free
    view[:] = 7.0  # the copy lands in a buffer nobody else has been given
    assert asm.finish(p, 0, 0, 0, view) is False
    assert asm.pool.free == free + 1


def test_mixed_dtypes_widen_the_set_to_float32() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    p, view = asm.reserve(0, 0, t_cam_ns=0, dtype=np.dtype(np.uint16))
    view[:] = 40000
    asm.slot(1, 0, 0, np.dtype(np.float32))[:] = 1.5  # widens while plane 0 is in flight
    asm.commit(1, 0, 0)
    asm.finish(p, 0, 0, 0, view)
    asm.slot(2, 0, 0, np.dtype(np.uint16))[:] = 3
    asm.commit(2, 0, 0)
    (fs,) = asm.pop_ready()
    assert fs.planes.dtype == np.float32
    assert fs.planes[:, 0, 0].tolist() == [40000.0, 1.5, 3.0]
