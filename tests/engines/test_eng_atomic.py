"""Atomic writes (engines/io/atomic): a failed write keeps the old file and leaves no temp."""

from __future__ import annotations

import pytest
import torch

from engines.errors import OutputError
from engines.inference.engine_cache import CacheKey, EngineCache
from engines.io.atomic import atomic_output, write_text
from engines.modeldir import MODEL_JSON, WEIGHTS, ModelInfo, save_model, write_info


def test_failing_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, files_in):
    out = tmp_path / "result.json"
    write_text(out, "old\n")
    for exc in (RuntimeError("failed half way"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_output(out) as tmp:
                tmp.write_text("half a new fi")
                raise exc
        assert out.read_text() == "old\n"
        assert files_in(tmp_path) == ["result.json"]


def test_missing_directory_is_an_output_error(tmp_path, files_in):
    with pytest.raises(OutputError, match="does not exist"):
        write_text(tmp_path / "missing" / "x.json", "{}")
    assert files_in(tmp_path) == []


def test_failing_model_save_keeps_the_old_model(tmp_path, files_in, monkeypatch):
    info = ModelInfo(name="tiny", channels=(4,) * 7)
    net = info.build()
    save_model(net, info, tmp_path)
    weights = (tmp_path / WEIGHTS).read_bytes()

    def disk_full(obj, f, *args, **kwargs):  # torch writes part of the file, then fails
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 truncated")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_model(net, info, tmp_path)
    assert (tmp_path / WEIGHTS).read_bytes() == weights
    assert files_in(tmp_path) == sorted([WEIGHTS, MODEL_JSON])

    monkeypatch.setattr(ModelInfo, "model_dump", lambda self, **kw: {"bad": object()})
    before = (tmp_path / MODEL_JSON).read_text()
    with pytest.raises(TypeError):
        write_info(info, tmp_path)
    assert (tmp_path / MODEL_JSON).read_text() == before
    assert files_in(tmp_path) == sorted([WEIGHTS, MODEL_JSON])


def test_engine_cache_store_leaves_no_temp(tmp_path, files_in):
    key = CacheKey("m", "0" * 64, "10.0", "gpu", "9.0", "fp32")
    path = EngineCache(tmp_path).store(key, b"engine bytes")
    assert files_in(tmp_path) == sorted([path.name, path.name + ".json"])
