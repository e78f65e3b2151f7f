"""Localization messages: version 2 carries photometry and precision; version 1 (five
columns) is still read; other versions are refused with a message naming them."""

from __future__ import annotations

import logging

import msgpack
import numpy as np
import pytest
import zmq

from clients.subscriber import LocalizationSubscriber
from engines.types import LEGACY_LOC_COLUMNS, LOC_COLUMNS, Localizations
from service.wire import (
    LOCS_VERSION,
    WIRE_VERSION,
    LocsMessage,
    Reject,
    WireError,
    decode_frame,
    decode_locs,
    encode_frame,
    encode_locs,
)


def _message(frame: int = 7, n: int = 3, photometry: bool = True) -> LocsMessage:
    rng = np.random.default_rng(frame)
    xyz = rng.uniform(0, 5000, (n, 3)).astype(np.float32)
    conf = rng.uniform(0.5, 1, n).astype(np.float32)
    if photometry:
        locs = Localizations(
            frame,
            xyz,
            conf,
            rng.uniform(500, 5000, n).astype(np.float32),
            rng.uniform(2, 30, n).astype(np.float32),
            rng.uniform(4, 40, (n, 3)).astype(np.float32),
        )
    else:
        locs = Localizations(frame, xyz, conf)
    return LocsMessage("voxloc", 0, frame, "default", "3", 0.5, 1, 2, 3, locs, "acq")


def _v1_parts(msg: LocsMessage, version: int = 1) -> list:
    """A message as a voxloc before photometry sent it (five columns)."""
    header = msg.header() | {
        "v": version,
        "columns": list(LEGACY_LOC_COLUMNS),
        "shape": [len(msg.locs), 5],
    }
    rows = np.ascontiguousarray(msg.locs.to_array()[:, :5])
    return [msgpack.packb(header, use_bin_type=True), rows.tobytes()]


def test_version_2_carries_photometry_in_csv_column_order():
    msg = _message()
    parts = encode_locs(msg)
    header = msgpack.unpackb(parts[0])
    assert header["v"] == LOCS_VERSION == 2
    assert header["columns"] == list(LOC_COLUMNS) and header["shape"] == [3, 10]
    got = decode_locs([parts[0], bytes(memoryview(parts[1]))]).locs
    for name in ("xyz_nm", "confidence", "photons", "background", "precision_nm"):
        np.testing.assert_array_equal(getattr(got, name), getattr(msg.locs, name))


def test_unknown_photometry_travels_as_nan():
    parts = encode_locs(_message(photometry=False))
    got = decode_locs([parts[0], bytes(memoryview(parts[1]))]).locs
    assert np.isnan(got.photons).all() and np.isnan(got.precision_nm).all()
    assert np.isfinite(got.xyz_nm).all()


def test_a_version_1_message_is_read_with_nan_photometry():
    msg = _message()
    got = decode_locs(_v1_parts(msg))
    assert (got.frame, got.model, got.acquisition) == (7, "default", "acq")
    np.testing.assert_array_equal(got.locs.xyz_nm, msg.locs.xyz_nm)
    np.testing.assert_array_equal(got.locs.confidence, msg.locs.confidence)
    assert np.isnan(got.locs.photons).all() and np.isnan(got.locs.background).all()


def test_other_versions_are_refused_naming_the_versions():
    msg = _message()
    with pytest.raises(WireError) as err:
        decode_locs(_v1_parts(msg, version=3))
    assert err.value.reason is Reject.VERSION
    assert str(err.value) == (
        "expected wire version 2 (or 1, still read) for 'locs' messages, got 3 from a "
        "newer voxloc: upgrade this reader"
    )
    header = msgpack.unpackb(encode_locs(msg)[0])
    for bad in ("2", None, True):
        parts = [msgpack.packb(header | {"v": bad}), b""]
        with pytest.raises(WireError, match=r"expected wire version 2 .* got "):
            decode_locs(parts)


def test_columns_and_shape_must_match_the_version():
    msg = _message()
    header = msgpack.unpackb(encode_locs(msg)[0])
    rows = msg.locs.to_array().tobytes()
    with pytest.raises(WireError, match=r"expected the columns .* in a version 2") as err:
        decode_locs([msgpack.packb(header | {"columns": list(LEGACY_LOC_COLUMNS)}), rows])
    assert err.value.reason is Reject.FIELDS
    v1 = header | {"v": 1, "columns": list(LEGACY_LOC_COLUMNS)}  # says 1, sends 10 columns
    with pytest.raises(WireError, match=r"expected \(N, 5\) float64 rows, got \[3, 10\]"):
        decode_locs([msgpack.packb(v1), rows])


def test_camera_frames_stay_version_1():
    parts = encode_frame("cam1", 0, 0, np.zeros((4, 4), np.uint16), 1)
    assert msgpack.unpackb(parts[0])["v"] == WIRE_VERSION == 1
    header = msgpack.unpackb(parts[0]) | {"v": 2}
    with pytest.raises(WireError, match=r"expected wire version 1 for 'frame' messages, got 2"):
        decode_frame([msgpack.packb(header), parts[1]])


@pytest.mark.timeout(30)
def test_subscriber_reads_old_messages_and_skips_unknown_versions(caplog):
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        with LocalizationSubscriber(f"tcp://127.0.0.1:{port}", context=ctx) as sub:
            assert pub.poll(10_000), "no subscriber connected"
            pub.recv()
            msg = _message()
            pub.send_multipart(_v1_parts(msg, version=9))
            pub.send_multipart(_v1_parts(msg))
            with caplog.at_level(logging.WARNING, logger="clients.subscriber"):
                got = sub.recv(10.0)
            assert got is not None and np.isnan(got.locs.photons).all()
            assert sub.bad_messages == 1
            assert "expected wire version 2 (or 1, still read)" in caplog.text
            assert "got 9" in caplog.text
    finally:
        pub.close()


def test_refined_travels_in_the_header_and_is_false_from_older_senders():
    msg = _message()
    refined = LocsMessage(**{**msg.__dict__, "refined": True})
    parts = encode_locs(refined)
    assert msgpack.unpackb(parts[0])["refined"] is True
    assert decode_locs([parts[0], bytes(memoryview(parts[1]))]).refined is True
    header = msgpack.unpackb(encode_locs(msg)[0])
    del header["refined"]  # a service before the key
    old = [msgpack.packb(header, use_bin_type=True), bytes(memoryview(encode_locs(msg)[1]))]
    assert decode_locs(old).refined is False
    header["refined"] = "yes"
    with pytest.raises(WireError, match="'refined' not a boolean") as err:
        decode_locs([msgpack.packb(header, use_bin_type=True), old[1]])
    assert err.value.reason is Reject.FIELDS
