"""Planning a distributed run without a cluster: inputs, chunks, manifests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.cluster.inputs import expand_paths, plan_inputs
from clients.cluster.manifest import Manifest, manifest_path
from engines.chunks import plan_chunks
from engines.errors import FormatError


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return [folder / n for n in names]


def test_chunks_hold_whole_batches_and_cover_every_frame():
    assert plan_chunks(30, 8, 4) == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert plan_chunks(30, 6, 4) == [(0, 8), (8, 16), (16, 24), (24, 30)]  # 6 -> 2 batches
    assert plan_chunks(3, 256, 16) == [(0, 3)]
    with pytest.raises(ValueError, match="chunk_frames"):
        plan_chunks(10, 0, 4)


def test_folders_globs_and_per_plane_files_become_named_stacks(tmp_path):
    a = tmp_path / "a"
    touch(a, "x.tif", "y.ome.tif", "notes.txt", *(f"pp_plane{k}.tif" for k in (1, 0, 3, 2)))
    touch(tmp_path / "b", "z.TIFF")
    stacks = plan_inputs([a, str(tmp_path / "b" / "*.TIFF")], tmp_path / "out", "h5")
    names = {s.name: s for s in stacks}
    assert sorted(names) == ["pp", "x", "y", "z"]
    assert [p.name for p in names["pp"].sources] == [f"pp_plane{k}.tif" for k in range(4)]
    assert names["y"].output == tmp_path / "out" / "y.h5"
    # -o a table: everything is one stack, as in a local run
    (one,) = plan_inputs([a / "x.tif"], tmp_path / "x.csv", "csv")
    assert one.sources == (a / "x.tif",) and one.output == tmp_path / "x.csv"
    (one,) = plan_inputs([a / "x.tif"], tmp_path / "x.smlm", "csv")  # a table, not a folder
    assert one.output == tmp_path / "x.smlm"
    smlm = plan_inputs([a / "x.tif", a / "y.ome.tif"], tmp_path / "out", "smlm")
    assert sorted(s.output.name for s in smlm) == ["x.smlm", "y.smlm"]


def test_input_mistakes_are_named(tmp_path):
    with pytest.raises(FormatError, match="matches no"):
        expand_paths([str(tmp_path / "*.tif")])
    touch(tmp_path / "one", "s.tif")
    touch(tmp_path / "two", "s.tif")
    with pytest.raises(FormatError, match="would both write"):
        plan_inputs([tmp_path / "one", tmp_path / "two"], tmp_path / "out", "csv")
    touch(tmp_path / "gap", "q_plane0.tif", "q_plane2.tif")
    with pytest.raises(FormatError, match="expected planes 0..1"):
        plan_inputs([tmp_path / "gap"], tmp_path / "out", "csv")
    # a missing file stays an input of its own: it fails alone, by name, at planning
    assert expand_paths([tmp_path / "missing.tif"]) == [tmp_path / "missing.tif"]


def test_manifest_resumes_the_same_job_and_restarts_a_changed_one(tmp_path):
    out = tmp_path / "o.csv"
    spans = [(0, 4), (4, 8)]
    job = {"model": "m", "frames": 8}
    m = Manifest.open(out, job, spans)
    rows = np.arange(10.0).reshape(2, 5)
    m.record((0, 4), rows, "torch/cpu", "host:1")
    (tmp_path / ".o.csv.partial-abc").write_text("left by a killed run")

    again = Manifest.open(out, job, spans)
    assert again.is_finished((0, 4)) and not again.is_finished((4, 8))
    np.testing.assert_array_equal(again.rows((0, 4)), rows)
    assert not (tmp_path / ".o.csv.partial-abc").exists()

    changed = Manifest.open(out, {**job, "model": "other"}, spans)
    assert changed.finished == {}
    assert not changed.parts.exists() or not any(changed.parts.iterdir())
    doc = json.loads(manifest_path(out).read_text())
    assert doc["job"]["model"] == "other" and doc["finished"] == []


def test_worker_processes_get_the_allocator_thresholds_back(monkeypatch):
    from engines.chunks import undo_malloc_trim_threshold

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert undo_malloc_trim_threshold() is False  # a normal process: nothing to undo
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as Dask's nanny sets it
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert undo_malloc_trim_threshold() is True
