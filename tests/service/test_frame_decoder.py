"""The ingest's fast path (wire.FrameDecoder) accepts exactly what the full decode and the
camera's checks accept, so every refused message still gets its reject reason."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from service.wire import FrameDecoder, WireError, decode_frame, encode_frame

H, W = 6, 8


def header(**changes: Any) -> dict[str, Any]:
    h = msgpack.unpackb(encode_frame("cam1", 1, 7, np.zeros((H, W), np.uint16), 123)[0])
    h.update(changes)
    return {k: v for k, v in h.items() if v is not DROP}


DROP = object()


def full_check(parts: list, dtype: str | None) -> bool:
    """decode_frame plus the ingest's per-camera checks (service/ingest.py _check)."""
    try:
        msg = decode_frame(parts)
    except WireError:
        return False
    return (
        msg.source == "cam1"
        and msg.plane == 1
        and (dtype is None or msg.image.dtype == dtype)
        and msg.image.shape == (H, W)
        and (msg.image.dtype.kind != "f" or bool(np.isfinite(msg.image).all()))
    )


PIXELS = np.arange(H * W, dtype=np.uint16).reshape(H, W)
CASES = [
    ("valid", header(), PIXELS),
    ("valid with acquisition", header(acquisition="run-1"), PIXELS),
    ("float32 pixels", header(dtype="float32"), PIXELS.astype(np.float32)),
    ("nan pixel", header(dtype="float32"), np.full((H, W), np.nan, np.float32)),
    ("bool plane", header(plane=True), PIXELS),
    ("float plane", header(plane=1.0), PIXELS),
    ("other plane", header(plane=2), PIXELS),
    ("other source", header(source="cam2"), PIXELS),
    ("float shape", header(shape=[float(H), float(W)]), PIXELS),
    ("transposed shape", header(shape=[W, H]), PIXELS.reshape(W, H)),
    ("negative frame", header(frame=-1), PIXELS),
    ("bool frame", header(frame=True), PIXELS),
    ("float t_ns", header(t_ns=1.5), PIXELS),
    ("no t_ns", header(t_ns=DROP), PIXELS),
    ("version 2", header(v=2), PIXELS),
    ("locs kind", header(kind="locs"), PIXELS),
    ("list dtype", header(dtype=["uint16"]), PIXELS),
    ("int8 dtype", header(dtype="int8"), PIXELS),
    ("empty acquisition", header(acquisition=""), PIXELS),
    ("numeric acquisition", header(acquisition=5), PIXELS),
    ("short payload", header(), PIXELS[:-1]),
]


@pytest.mark.parametrize("dtype", [None, "uint16"])
@pytest.mark.parametrize(("name", "hdr", "pixels"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_accepts_exactly_what_the_full_checks_accept(
    name: str, hdr: dict, pixels: np.ndarray, dtype: str | None
) -> None:
    decoder = FrameDecoder(source="cam1", plane=1, height=H, width=W, dtype=dtype)
    parts = [msgpack.packb(hdr, use_bin_type=True), np.ascontiguousarray(pixels).tobytes()]
    fast = decoder.decode(parts)
    assert (fast is not None) == full_check(parts, dtype), name
    if fast is not None:
        full = decode_frame(parts)
        assert fast[:4] == full[:4] and fast.acquisition == full.acquisition
        np.testing.assert_array_equal(fast.image, full.image)


def test_garbage_is_left_to_the_full_decode() -> None:
    decoder = FrameDecoder(source="cam1", plane=1, height=H, width=W, dtype=None)
    for parts in ([b"\xc1"], [b"\xc1", b""], [msgpack.packb([1, 2]), b""], []):
        assert decoder.decode(parts) is None
