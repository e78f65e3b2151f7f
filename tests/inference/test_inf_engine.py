"""Behaviour of the engine interface, the same for every CPU backend."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from inference_parity import CPU_BACKENDS

from engines.inference import create_engine
from engines.types import Localizations


def _flat(locs: list[Localizations]) -> np.ndarray:
    """All rows, NaN (unknown photometry) as -1 so that equal rows compare equal."""
    return np.nan_to_num(np.concatenate([loc.to_array() for loc in locs]), nan=-1.0)


@pytest.fixture(params=CPU_BACKENDS)
def engine(request, shared_model_dir):
    eng = create_engine(shared_model_dir, request.param)
    yield eng
    eng.close()


def test_threshold_changes_without_rebuild(engine, frames):
    state = getattr(engine, "session", None) or engine.net
    counts = [sum(map(len, engine.infer(frames, threshold=t))) for t in (0.2, 0.5, 0.9)]
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2]
    engine.threshold = 0.9
    assert sum(map(len, engine.infer(frames))) == counts[2]
    assert (getattr(engine, "session", None) or engine.net) is state
    # position and confidence of each localization do not depend on the others; its
    # photometry (neighbours' light taken out) and precision (crowding term) do
    high = _flat(engine.infer(frames, threshold=0.9))[:, :5]
    low = _flat(engine.infer(frames, threshold=0.2))[:, :5]
    low_rows = {tuple(np.round(r, 3)) for r in low}
    assert all(tuple(np.round(r, 3)) in low_rows for r in high)


def test_one_result_per_frame_with_frame_numbers(engine, frames):
    blank = np.full((2, *frames.shape[1:]), engine.info.input_offset, np.float32)
    locs = engine.infer(np.concatenate([frames[:2], blank]), first_frame=7)
    assert [loc.frame for loc in locs] == [7, 8, 9, 10]
    assert all(loc.xyz_nm.shape == (len(loc), 3) and loc.xyz_nm.dtype == np.float32 for loc in locs)
    assert len(locs[0]) > 0


def test_uint16_and_single_frame_inputs(engine, frames):
    raw = np.clip(np.round(frames), 0, 65535)
    a = engine.infer(raw.astype(np.uint16))
    b = engine.infer(raw.astype(np.float32))
    np.testing.assert_array_equal(_flat(a), _flat(b))
    one = engine.infer(raw[3].astype(np.uint16), first_frame=3)
    np.testing.assert_array_equal(one[0].xyz_nm, a[3].xyz_nm)


def test_shapes_vary_between_calls(engine, frames):
    full = engine.infer(frames)
    for b, h, w in ((1, 48, 40), (3, 32, 24), (6, 48, 40), (2, 17, 33)):
        out = engine.infer(frames[:b, :, :h, :w])
        assert len(out) == b
    np.testing.assert_array_equal(_flat(engine.infer(frames)), _flat(full))


def test_chunking_and_padding_do_not_change_results(engine, frames):
    whole = _flat(engine.infer(frames))
    engine.max_pixels = 2 * 48 * 40  # two frames per backend call
    chunked = _flat(engine.infer(frames))
    engine.pad_batch, engine.max_pixels = True, 3 * 48 * 40  # chunks of 3 padded to 4
    padded = _flat(engine.infer(frames))
    for other in (chunked, padded):
        assert other.shape == whole.shape
        np.testing.assert_allclose(other, whole, atol=1e-3)


def test_concurrent_callers_get_their_own_results(engine, frames):
    want = [_flat(engine.infer(frames[i : i + 3])) for i in (0, 3)]
    got: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        for _ in range(3):
            got[i] = _flat(engine.infer(frames[i : i + 3]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[3], want[1])
