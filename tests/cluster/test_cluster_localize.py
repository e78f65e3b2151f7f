"""``voxloc localize --workers/--scheduler`` on a real 2-process LocalCluster.

Every output is compared with the table a single-process ``voxloc localize`` writes for
the same stack: same bytes, so the same rows in the same order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cluster_setup import BATCH, CHUNK_FRAMES, STACKS
from polling import wait_for

from clients.cluster.manifest import manifest_path
from engines.io.loctable import read_hdf5, read_table

pytest.importorskip("distributed", reason="pip install 'voxloc[cluster]'")

REPO = Path(__file__).resolve().parents[2]
OPTS = ["--batch", BATCH, "--chunk-frames", CHUNK_FRAMES, "-q"]


def chunks_of(frames: int, chunk: int = CHUNK_FRAMES) -> int:
    return -(-frames // chunk)


def finished_chunks(output: Path) -> int:
    try:
        doc = json.loads(manifest_path(output).read_text())
    except (OSError, ValueError):
        return 0
    return len(doc["finished"])


def assert_identical(out: Path, stacks, names) -> None:
    for name in names:
        got = out / f"{name}.csv"
        assert got.read_bytes() == stacks.reference[name].read_bytes(), name
        assert json.loads(manifest_path(got).read_text())["complete"] is True
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".parts"]
    assert leftovers == []


@pytest.mark.slow
def test_local_cluster_output_identical_to_single_process(stacks, voxloc, tmp_path):
    out = tmp_path / "out"
    res = voxloc("localize", stacks.folder, "-o", out, "--workers", 2, *OPTS)
    assert res.code == 0, res.out + res.err
    assert_identical(out, stacks, STACKS)
    assert "Dask dashboard: http://" in res.out
    assert "3 of 3 inputs finished" in res.out
    assert res.out.count("torch/") + res.out.count("onnxruntime/") >= 1  # engine per worker
    total = sum(chunks_of(f) for f, _ in STACKS.values())
    runs = sum(
        int(line.split("(")[-1].split()[0]) for line in res.out.splitlines() if "chunks run" in line
    )
    assert runs == total


@pytest.mark.slow
def test_hdf5_outputs_hold_the_local_rows(stacks, cluster, voxloc, tmp_path):
    out = tmp_path / "out"
    res = voxloc(
        "localize",
        stacks.folder,
        "-o",
        out,
        "--scheduler",
        cluster.address,
        "--format",
        "h5",
        *OPTS,
    )
    assert res.code == 0, res.out + res.err
    for name in STACKS:
        table, info = read_hdf5(out / f"{name}.h5")
        ref = read_table(stacks.reference[name])
        assert table.frame.tolist() == ref.frame.tolist()
        np.testing.assert_allclose(table.xyz_nm, ref.xyz_nm, atol=2e-3)  # float32 pixels
        assert info[0]["Frames"] == STACKS[name][0]
        assert info[1]["Backend"].count("/") >= 1


@pytest.mark.slow
def test_worker_killed_mid_run_gives_identical_output(stacks, cluster, voxloc, tmp_path):
    cluster.wait_for_workers(2)
    out = tmp_path / "out"
    pids = cluster.worker_pids()
    killed: dict[str, str] = {}

    def kill_a_busy_worker() -> None:
        wait_for(lambda: finished_chunks(out / "pp.csv") >= 1, "a first finished chunk", 120, 0.002)
        busy = [a for a, keys in cluster.client.processing().items() if keys]
        addr = busy[0] if busy else next(iter(pids))
        os.kill(pids[addr], signal.SIGKILL)
        killed["addr"] = addr

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    res = voxloc(
        "localize",
        stacks.folder,
        "-o",
        out,
        "--scheduler",
        cluster.address,
        "--batch",
        BATCH,
        "--chunk-frames",
        BATCH,
        "-q",
    )
    killer.join(timeout=30)
    assert res.code == 0, res.out + res.err
    assert "addr" in killed, "the run ended before a worker was killed"
    assert_identical(out, stacks, STACKS)
    removals = [
        msg
        for _, msg in cluster.client.get_events(killed["addr"])
        if msg.get("action") == "remove-worker"
    ]
    assert removals, "the scheduler did not see the worker die"
    lost = [k for m in removals for k in m["processing-tasks"] if "voxloc-localize" in str(k)]
    assert lost, "the killed worker was running no chunk"  # so a chunk was re-run elsewhere
    cluster.wait_for_workers(2)  # the nanny restarts it for the next tests


@pytest.mark.slow
def test_resume_after_interrupted_run_reruns_only_unfinished_chunks(
    stacks, cluster, voxloc, tmp_path
):
    cluster.wait_for_workers(2)
    inputs = stacks.copy_to(tmp_path / "in", ["s1", "s2"])
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "clients.cli",
        "localize",
        str(inputs),
        "-o",
        str(out),
        "--scheduler",
        cluster.address,
        "--batch",
        str(BATCH),
        "--chunk-frames",
        str(BATCH),
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: finished_chunks(out / "s1.csv") >= 2, "2 finished chunks", 120, 0.002)
    finally:
        proc.kill()  # the client dies: no clean-up of its own
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    done = {n: finished_chunks(out / f"{n}.csv") for n in ("s1", "s2")}
    total = {n: chunks_of(STACKS[n][0], BATCH) for n in ("s1", "s2")}
    assert done["s1"] < total["s1"], "the first run finished before it was interrupted"
    assert not (out / "s1.csv").exists()  # nothing half-written under the final name

    res = localize_on(voxloc, cluster, inputs, out)
    assert res.code == 0, res.out + res.err
    assert_identical(out, stacks, ["s1", "s2"])
    for n in ("s1", "s2"):
        line = next(line for line in res.out.splitlines() if f"{n}.tif:" in line)
        if done[n] == total[n] and (out / f"{n}.csv").exists() and "up to date" in line:
            continue
        assert f"({total[n] - done[n]} chunks run, {done[n]} resumed)" in line, line

    again = localize_on(voxloc, cluster, inputs, out)
    assert again.code == 0 and again.out.count("up to date") == 2, again.out


def localize_on(voxloc, cluster, inputs, out):
    """``voxloc localize INPUTS -o OUT`` on the running cluster, one batch per chunk."""
    return voxloc(
        "localize",
        inputs,
        "-o",
        out,
        "--scheduler",
        cluster.address,
        "--batch",
        BATCH,
        "--chunk-frames",
        BATCH,
        "-q",
    )


def _damage_pixels(path: Path) -> None:
    """A zlib TIFF whose headers read fine and whose last frame's data is overwritten."""
    frames = tifffile.imread(path)
    tifffile.imwrite(path, frames, imagej=True, metadata={"axes": "TZYX"}, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[len(tif.pages) - 2]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_corrupt_input_is_named_and_the_others_complete(stacks, cluster, voxloc, tmp_path):
    cluster.wait_for_workers(2)
    inputs = stacks.copy_to(tmp_path / "in", ["s1", "s2"])
    shutil_copy = inputs / "damaged.tif"
    shutil_copy.write_bytes((inputs / "s2.tif").read_bytes())
    _damage_pixels(shutil_copy)  # fails on a worker, in its last chunk
    (inputs / "garbage.tif").write_bytes(b"II*\x00" + os.urandom(3000))  # fails at planning
    out = tmp_path / "out"
    res = voxloc("localize", inputs, "-o", out, "--scheduler", cluster.address, *OPTS)
    assert res.code == 1, res.out + res.err
    failed = [line for line in res.out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 2, res.out
    assert any("damaged.tif" in line and "damaged file" in line for line in failed), failed
    assert any("garbage.tif" in line for line in failed), failed
    assert "2 of 4 inputs finished" in res.out
    assert not (out / "damaged.csv").exists() and not (out / "garbage.csv").exists()
    for name in ("s1", "s2"):
        assert (out / f"{name}.csv").read_bytes() == stacks.reference[name].read_bytes()


def test_chunk_rows_carry_chi2_and_older_parts_still_read():
    from engines.chunks import CHUNK_COLUMNS, chunk_table
    from engines.types import LEGACY_LOC_COLUMNS, LOC_COLUMNS

    rows = np.arange(2 * CHUNK_COLUMNS, dtype=np.float64).reshape(2, CHUNK_COLUMNS)
    table = chunk_table(rows)
    np.testing.assert_array_equal(table.extra["chi2"], rows[:, -1])
    np.testing.assert_array_equal(table.to_rows(), rows[:, : len(LOC_COLUMNS)])
    for width in (len(LOC_COLUMNS), len(LEGACY_LOC_COLUMNS)):  # parts of earlier versions
        old = chunk_table(rows[:, :width])
        assert len(old) == 2 and np.isnan(old.extra["chi2"]).all()
