"""Bad input to ``voxloc localize`` / ``simulate``: one-line error naming the problem,
exit code 2, and no output (or temp file) left behind."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from clients.cli import main

SIZE = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Small valid stacks to break: a 4-plane stack, its per-plane files, a 3-plane one."""
    d = tmp_path_factory.mktemp("inputs")
    common = ["--frames", "2", "--size", str(SIZE), "-q"]
    assert main(["simulate", "-o", str(d / "ok.tif"), *common]) == 0
    assert main(["simulate", "-o", str(d / "pp.tif"), "--per-plane", *common]) == 0
    assert main(["simulate", "-o", str(d / "three.tif"), "--planes", "3", *common]) == 0
    return d


def _fails(voxloc, files_in, out_dir: Path, args: list, message: str) -> None:
    before = files_in(out_dir)
    res = voxloc(*args)
    assert res.code == 2, res.err
    errors = res.error_lines()
    assert len(errors) == 1, res.err
    assert errors[0].startswith(f"voxloc {args[0]}: error: ")
    assert message in errors[0], errors[0]
    assert "Traceback" not in res.err
    assert files_in(out_dir) == before  # no output, no leftover temp file


def test_wrong_plane_count(inputs, tmp_path, voxloc, files_in):
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", inputs / "three.tif", "-o", tmp_path / "out.csv"],
        "expected 4 planes per frame, got 3",
    )


def test_wrong_number_of_per_plane_files(inputs, tmp_path, voxloc, files_in):
    planes = [inputs / f"pp_plane{k}.tif" for k in range(3)]
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", *planes, "-o", tmp_path / "out.csv"],
        "expected one TIFF per plane (4 files), got 3 files",
    )


def test_mismatched_per_plane_files(inputs, tmp_path, voxloc, files_in):
    odd = tmp_path / "odd.tif"
    tifffile.imwrite(odd, np.zeros((2, SIZE + 1, SIZE), np.float32), photometric="minisblack")
    planes = [inputs / f"pp_plane{k}.tif" for k in range(3)] + [odd]
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", *planes, "-o", tmp_path / "out.csv"],
        f"odd.tif (plane 3) has 2 frames of {SIZE + 1}x{SIZE} float32",
    )


def test_non_tiff_input(inputs, tmp_path, voxloc, files_in):
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", inputs / "ok_truth.csv", "-o", tmp_path / "out.csv"],
        "ok_truth.csv is not a TIFF file",
    )


def test_empty_stack(tmp_path, voxloc, files_in):
    empty = tmp_path / "empty.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile warns about writing a zero-size array
        tifffile.imwrite(empty, np.zeros((0, 4, SIZE, SIZE), np.float32))
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", empty, "-o", tmp_path / "out.h5"],
        "empty.tif: empty stack",
    )


def test_nan_in_a_later_batch_leaves_no_output(tmp_path, voxloc, files_in):
    frames = np.full((5, 4, SIZE, SIZE), 10.0, np.float32)
    frames[3, 2, 5, 7] = np.nan  # batch 2 of 3: batch 1 has been written by then
    stack = tmp_path / "nan.tif"
    tifffile.imwrite(stack, frames, imagej=True, metadata={"axes": "TZYX"})
    for out in ("out.csv", "out.h5"):
        _fails(
            voxloc,
            files_in,
            tmp_path,
            ["localize", stack, "-o", tmp_path / out, "--batch", "2", "-q"],
            "frame 3 (counting from 0) has 1 NaN/inf pixels",
        )


def test_unknown_model(inputs, tmp_path, voxloc, files_in):
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", inputs / "ok.tif", "-o", tmp_path / "out.csv", "--model", "nosuch"],
        "unknown model 'nosuch'",
    )


def test_unwritable_output(inputs, tmp_path, voxloc, files_in):
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", inputs / "ok.tif", "-o", tmp_path / "missing" / "out.csv"],
        "directory",
    )
    (tmp_path / "taken.csv").mkdir()
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", inputs / "ok.tif", "-o", tmp_path / "taken.csv"],
        "is a directory",
    )
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", inputs / "ok.tif", "-o", tmp_path / "out.txt"],
        "unknown table format '.txt'",
    )
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["simulate", "-o", tmp_path / "missing" / "s.tif", "-q"],
        "does not exist",
    )


def test_bad_threshold(inputs, tmp_path, voxloc, files_in):
    _fails(
        voxloc,
        files_in,
        tmp_path,
        ["localize", inputs / "ok.tif", "-o", tmp_path / "out.csv", "--threshold", "1.5"],
        "threshold must be in [0, 1), got 1.5",
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_installed_entry_point_exit_code(inputs, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "localize",
            str(inputs / "ok_truth.csv"),
            "-o",
            str(tmp_path / "out.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("voxloc localize: error: ") and "is not a TIFF file" in last
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
