"""Reading input stacks: every accepted TIFF layout, batches, memory mapping, bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from engines.errors import FormatError
from engines.io.stacks import open_stack

T, P, H, W = 5, 4, 12, 10
STACK = np.arange(T * P * H * W, dtype=np.uint16).reshape(T, P, H, W)


def _imagej(path: Path, axes: str = "TZYX", **kw) -> list[Path]:
    tifffile.imwrite(path, STACK, imagej=True, metadata={"axes": axes}, **kw)
    return [path]


def _per_plane(path: Path, compress_plane: int = 2) -> list[Path]:
    out = []
    for k in range(P):
        p = path.with_name(f"{path.stem}_plane{k}.tif")
        comp = "zlib" if k == compress_plane else None
        tifffile.imwrite(
            p, STACK[:, k], compression=comp, photometric="minisblack", metadata={"axes": "TYX"}
        )
        out.append(p)
    return out


LAYOUTS = {
    # name: (writer, memory-mapped)
    "imagej-TZYX": (lambda p: _imagej(p), True),
    "imagej-TCYX": (lambda p: _imagej(p, "TCYX"), True),
    "ome-TZYX": (
        lambda p: (
            tifffile.imwrite(p.with_suffix(".ome.tif"), STACK, metadata={"axes": "TZYX"}),
            [p.with_suffix(".ome.tif")],
        )[1],
        True,
    ),
    "plain-4d": (lambda p: (tifffile.imwrite(p, STACK, photometric="minisblack"), [p])[1], True),
    # what older tifffile wrote for a plain (T, 4, H, W) array: planes as separate samples
    "rgba-planar-samples": (
        lambda p: (
            tifffile.imwrite(
                p,
                STACK,
                photometric="rgb",
                planarconfig="separate",
                extrasamples=["unspecified"],
                compression="zlib",
            ),
            [p],
        )[1],
        False,
    ),
    "zlib-TZYX": (
        lambda p: (
            tifffile.imwrite(
                p, STACK, compression="zlib", photometric="minisblack", metadata={"axes": "TZYX"}
            ),
            [p],
        )[1],
        False,
    ),
    "pages-only": (
        lambda p: (tifffile.imwrite(p, STACK.reshape(T * P, H, W), imagej=True), [p])[1],
        True,
    ),
    "big-endian": (
        lambda p: (
            tifffile.imwrite(
                p, STACK, byteorder=">", photometric="minisblack", metadata={"axes": "TZYX"}
            ),
            [p],
        )[1],
        True,
    ),
    "per-plane": (_per_plane, None),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_read_back_frame_major_plane_minor(tmp_path, layout):
    writer, mapped = LAYOUTS[layout]
    paths = writer(tmp_path / "stack.tif")
    with open_stack(paths, P) as stack:
        assert stack.shape == (T, P, H, W)
        assert stack.dtype == np.dtype(np.uint16)  # native byte order
        firsts, parts = zip(*stack.batches(2), strict=True)
        if mapped is not None:
            assert stack.sources[0].memory_mapped is mapped
    assert firsts == (0, 2, 4)
    assert [len(p) for p in parts] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(parts), STACK)


def test_batches_are_writable_copies_not_views_of_the_file(tmp_path):
    with open_stack(_imagej(tmp_path / "s.tif"), P) as stack:
        assert stack.sources[0].memory_mapped
        frames = stack.read(1, 3)
    assert frames.flags.writeable and frames.flags.c_contiguous
    assert not isinstance(frames, np.memmap)
    np.testing.assert_array_equal(frames, STACK[1:3])


def test_single_frame_hyperstack(tmp_path):
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, STACK[:1], imagej=True, metadata={"axes": "TZYX"})
    with open_stack([path], P) as stack:
        assert stack.shape == (1, P, H, W)
        np.testing.assert_array_equal(stack.read(0, 1), STACK[:1])


def test_float32_stack_keeps_its_dtype(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, STACK.astype(np.float32), imagej=True, metadata={"axes": "TZYX"})
    with open_stack([path], P) as stack:
        assert stack.read(0, 1).dtype == np.float32


def test_wrong_plane_count_names_both_counts(tmp_path):
    paths = _imagej(tmp_path / "s.tif")
    with pytest.raises(FormatError, match=r"expected 3 planes per frame, got 4"):
        open_stack(paths, 3)


def test_per_plane_file_count_must_match(tmp_path):
    paths = _per_plane(tmp_path / "s.tif")
    with pytest.raises(FormatError, match=r"one TIFF per plane \(4 files\), got 3"):
        open_stack(paths[:3], P)


def test_mismatched_per_plane_files_are_named(tmp_path):
    paths = _per_plane(tmp_path / "s.tif")
    tifffile.imwrite(paths[3], STACK[:4, 3], photometric="minisblack")  # one frame short
    with pytest.raises(
        FormatError,
        match=r"per-plane files differ: .*plane0.tif has 5 frames"
        r".*plane3.tif \(plane 3\) has 4 frames",
    ):
        open_stack(paths, P)


def test_not_a_tiff_and_empty_inputs(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("frame,x\n")
    with pytest.raises(FormatError, match=r"notes.tif is not a TIFF"):
        open_stack([text], P)
    empty = tmp_path / "empty.tif"
    empty.touch()
    with pytest.raises(FormatError, match=r"empty.tif is an empty file"):
        open_stack([empty], P)
    zero = tmp_path / "zero.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile warns about a zero-size array
        tifffile.imwrite(zero, np.zeros((0, H, W), np.uint16))
    with pytest.raises(FormatError, match=r"zero.tif: empty stack"):
        open_stack([zero], P)
    with pytest.raises(FormatError, match=r"missing.tif does not exist"):
        open_stack([tmp_path / "missing.tif"], P)


def test_plain_page_sequence_must_divide_into_planes(tmp_path):
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, STACK.reshape(T * P, H, W)[:-1], imagej=True)
    with pytest.raises(FormatError, match=r"19 images .* not a multiple of 4 planes"):
        open_stack([path], P)


def test_truncated_imagej_file_is_reported(tmp_path):
    path = _imagej(tmp_path / "cut.tif")[0]
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    with pytest.raises(
        FormatError,
        match=r"cut.tif: truncated or corrupted TIFF: its ImageJ "
        r"metadata states 20 images, the file holds 1",
    ):
        open_stack([path], P)
