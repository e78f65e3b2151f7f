"""TensorRT: guarded import, engine cache (stale -> rebuild), profile checks, GPU run."""

from __future__ import annotations

import dataclasses
import importlib
import sys

import numpy as np
import pytest
from inference_parity import GPU, NO_TRT

from engines.errors import EngineError
from engines.inference import create_engine
from engines.inference.base import BackendUnavailableError
from engines.inference.engine_cache import CacheKey, EngineCache, Profile

KEY = CacheKey(
    model="default",
    onnx_sha256="ab" * 32,
    trt_version="10.3.0",
    gpu_name="NVIDIA H100",
    compute_capability="9.0",
    precision="fp16",
)


def test_import_without_tensorrt_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "engines.inference.tensorrt_backend", raising=False)
    with pytest.raises(BackendUnavailableError, match=r"pip install voxloc\[tensorrt\]"):
        importlib.import_module("engines.inference.tensorrt_backend")
    with pytest.raises(ImportError):  # also an ImportError for generic callers
        importlib.import_module("engines.inference.tensorrt_backend")


class Builder:
    """Stands in for TensorRT's builder and runtime (outside the project)."""

    def __init__(self, refuse: bytes = b"") -> None:
        self.builds = 0
        self.refuse = refuse

    def build(self) -> bytes:
        self.builds += 1
        return f"engine #{self.builds}".encode()

    def deserialize(self, blob: bytes) -> str | None:
        return None if blob == self.refuse else blob.decode()


def test_cache_builds_once_then_loads(tmp_path):
    cache, b = EngineCache(tmp_path), Builder()
    assert cache.get_or_build(KEY, b.build, b.deserialize)[0] == "engine #1"
    obj, path = cache.get_or_build(KEY, b.build, b.deserialize)
    assert (obj, b.builds) == ("engine #1", 1)
    assert path.name.startswith("default-fp16-") and path.with_name(path.name + ".json").is_file()
    assert cache.get_or_build(KEY, b.build, b.deserialize, force=True)[0] == "engine #2"


@pytest.mark.parametrize(
    "change",
    [
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA L4"},
        {"precision": "fp32"},
        {"profile": Profile(max_size=2048)},
        {"onnx_sha256": "cd" * 32},
    ],
)
def test_key_covers_what_engines_depend_on(change):
    other = dataclasses.replace(KEY, **change)
    assert other.digest() != KEY.digest() and other.filename() != KEY.filename()


def test_stale_cache_from_other_tensorrt_is_rebuilt(tmp_path):
    cache, b = EngineCache(tmp_path), Builder()
    _, path = cache.get_or_build(KEY, b.build, b.deserialize)
    # an engine from TensorRT 9 copied over this key's file name, sidecar and all
    old = dataclasses.replace(KEY, trt_version="9.2.0")
    cache.store(old, b"old engine")
    old_path = cache.path(old)
    path.write_bytes(old_path.read_bytes())
    path.with_name(path.name + ".json").write_bytes(
        old_path.with_name(old_path.name + ".json").read_bytes()
    )
    assert cache.get_or_build(KEY, b.build, b.deserialize)[0] == "engine #2"
    assert cache.load(KEY) == b"engine #2"


def test_corrupt_or_refused_cache_is_rebuilt(tmp_path):
    b = Builder(refuse=b"engine #1")  # e.g. serialised by another TensorRT build
    cache = EngineCache(tmp_path)
    with pytest.raises(EngineError, match="cannot be deserialised"):
        cache.get_or_build(KEY, b.build, b.deserialize)  # fresh build refused: clear error
    assert cache.get_or_build(KEY, b.build, b.deserialize)[0] == "engine #2"
    cache.path(KEY).write_bytes(b"bit rot")
    assert cache.load(KEY) is None
    assert cache.get_or_build(KEY, b.build, b.deserialize)[0] == "engine #3"
    cache.path(KEY).with_name(cache.path(KEY).name + ".json").write_text("{not json")
    assert cache.get_or_build(KEY, b.build, b.deserialize)[0] == "engine #4"


def test_profile_checks():
    with pytest.raises(EngineError, match="got 8/4/32"):
        Profile(min_batch=8, opt_batch=4)
    p = Profile(min_size=32, max_size=512)
    assert p.shapes(4) == ((1, 4, 32, 32), (8, 4, 256, 256), (32, 4, 512, 512))
    p.check_frame(32, 512)
    with pytest.raises(EngineError, match="frame width 600 px is outside"):
        p.check_frame(64, 600)


@GPU
@NO_TRT
def test_tensorrt_engine_is_cached_and_chunks_large_batches(shared_model_dir, frames, tmp_path):
    profile = Profile(min_batch=1, opt_batch=2, max_batch=4, min_size=16, opt_size=48, max_size=64)
    opts = {"device": "cuda", "profile": profile, "cache_dir": tmp_path}
    first = create_engine(shared_model_dir, "tensorrt", **opts)
    locs = first.infer(frames)  # 6 frames > max_batch 4: two calls
    path = first.engine_path
    first.close()
    stamp = path.stat().st_mtime_ns
    second = create_engine(shared_model_dir, "tensorrt", **opts)
    assert second.engine_path == path and path.stat().st_mtime_ns == stamp
    again = second.infer(frames)
    with pytest.raises(EngineError, match="outside the TensorRT engine's profile"):
        second.infer(np.zeros((1, 4, 80, 80), np.float32))
    second.close()
    assert [len(a) for a in again] == [len(a) for a in locs]
