"""``voxloc simulate`` then ``voxloc localize`` through the real CLI, default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from clients.cli import main
from engines.evaluate.matching import Matching, match_localizations
from engines.io import read_table
from engines.io.loctable import CSV_HEADER, read_hdf5

FRAMES = 6
# the shipped default reaches molecule Jaccard > 0.9 at 64x64x4 / 50 molecules; this
# bound leaves room for a provisional checkpoint while still catching a broken pipeline
JACCARD_MIN = 0.7
RMSE_LATERAL_MAX_NM = 60.0
RMSE_AXIAL_MAX_NM = 90.0


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sim")
    common = ["--frames", FRAMES, "--molecules", 50, "--seed", 3, "-q"]
    assert main([str(a) for a in ["simulate", "-o", d / "s.tif", *common]]) == 0
    assert main([str(a) for a in ["simulate", "-o", d / "pp.tif", "--per-plane", *common]]) == 0
    return d


@pytest.fixture(scope="module")
def localized_csv(sim) -> Path:
    out = sim / "locs.csv"
    assert main(["localize", str(sim / "s.tif"), "-o", str(out), "-q"]) == 0
    return out


def test_simulate_writes_imagej_hyperstack_and_ground_truth(sim):
    with tifffile.TiffFile(sim / "s.tif") as tif:
        assert tif.is_imagej
        series = tif.series[0]
        assert series.axes == "TZYX" and series.shape == (FRAMES, 4, 64, 64)
        assert series.dtype == np.float32  # paper noise mode
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.4)  # um
        assert tif.imagej_metadata["unit"] == "um"
        xres = tif.pages[0].tags["XResolution"].value
        assert xres[1] / xres[0] == pytest.approx(0.192, rel=1e-6)  # um per pixel
        frames = series.asarray()
    assert 5.0 < float(np.median(frames)) < 15.0  # background: Poisson rate 10
    truth = read_table(sim / "s_truth.csv")
    lines = (sim / "s_truth.csv").read_text().splitlines()
    assert lines[0] == ",".join(CSV_HEADER) + ",weight"
    assert sorted(set(truth.frame.tolist())) == list(range(FRAMES))  # 1..6 in the file
    assert {line.split(",")[0] for line in lines[1:]} == {str(f) for f in range(1, FRAMES + 1)}
    # 50 per frame on average: the simulator spreads molecules over frame + margin at
    # that density, so the count inside one frame varies a little
    assert FRAMES * 40 <= len(truth) <= FRAMES * 60
    assert truth.xyz_nm[:, :2].min() >= 0 and truth.xyz_nm[:, :2].max() < 64 * 192
    assert truth.xyz_nm[:, 2].min() >= 0 and truth.xyz_nm[:, 2].max() < 1600
    w = truth.extra["weight"]
    assert w.min() >= 0.3 and w.max() <= 1.0


def test_per_plane_files_hold_the_same_frames(sim):
    with tifffile.TiffFile(sim / "s.tif") as tif:
        stack = tif.asarray()
    for k in range(4):
        with tifffile.TiffFile(sim / f"pp_plane{k}.tif") as tif:
            assert tif.series[0].axes == "TYX"
            np.testing.assert_array_equal(tif.asarray(), stack[:, k])


def test_simulate_weight_sets_the_brightness_and_refuses_a_reversed_range(tmp_path, voxloc):
    args = ["simulate", "-o", tmp_path / "w.tif", "--frames", 2, "--size", 24, "-q"]
    res = voxloc(*args, "--weight", 0.65, 0.65)
    assert res.code == 0, res.err
    weight = read_table(tmp_path / "w_truth.csv").extra["weight"]
    assert len(weight) > 0 and np.allclose(weight, 0.65)
    res = voxloc(*args, "--weight", 0.9, 0.2)
    assert res.code != 0 and "weight_min 0.9 > weight_max 0.2" in res.err


def test_simulate_camera_mode_writes_uint16(tmp_path, voxloc):
    res = voxloc(
        "simulate",
        "-o",
        tmp_path / "cam.tif",
        "--frames",
        2,
        "--size",
        24,
        "--camera",
        "emccd",
        "--molecules",
        0,
        "-q",
    )
    assert res.code == 0, res.err
    with tifffile.TiffFile(tmp_path / "cam.tif") as tif:
        data = tif.asarray()
    assert data.dtype == np.uint16 and data.shape == (2, 4, 24, 24)
    # no molecules: baseline 100 + 10 photons * qe 0.9 * gain 100 / 12 e-/ADU = 175 ADU
    assert float(data.mean()) == pytest.approx(175.0, abs=3.0)


def _score(pred_path: Path, truth_path: Path) -> Matching:
    pred, truth = read_table(pred_path), read_table(truth_path)
    return Matching.concat(
        match_localizations(pred.in_frame(f), truth.in_frame(f)) for f in range(FRAMES)
    )


def test_localize_default_model_finds_the_molecules(sim, localized_csv):
    m = _score(localized_csv, sim / "s_truth.csv")
    rmse_lat = float(np.sqrt((m.delta_nm[:, :2] ** 2).sum(axis=1).mean()))
    rmse_ax = float(np.sqrt((m.delta_nm[:, 2] ** 2).mean()))
    assert m.jaccard >= JACCARD_MIN, (m.tp, m.fp, m.fn)
    assert rmse_lat <= RMSE_LATERAL_MAX_NM and rmse_ax <= RMSE_AXIAL_MAX_NM
    header = localized_csv.read_text().splitlines()[0]
    # the table's columns, the model PSF's width at each localization's z, the fit's chi2
    assert header == ",".join(CSV_HEADER) + ",sigma1 [nm],sigma2 [nm],chi2"
    chi2 = read_table(localized_csv).extra["chi2"]
    assert np.isfinite(chi2).all() and chi2.min() > 0
    conf = read_table(localized_csv).confidence
    assert conf.min() > 0.5 and conf.max() <= 1.0  # default threshold tau = 0.5


def test_per_plane_input_hdf5_output_and_batch_size_agree(sim, localized_csv, voxloc):
    planes = [sim / f"pp_plane{k}.tif" for k in range(4)]
    res = voxloc("localize", *planes, "-o", sim / "pp.h5", "--batch", 4, "-q")
    assert res.code == 0, res.err
    assert "localizations in 6 frames" in res.out
    csv_t = read_table(localized_csv)
    h5_t, info = read_hdf5(sim / "pp.h5")
    assert h5_t.frame.tolist() == csv_t.frame.tolist()
    np.testing.assert_allclose(h5_t.xyz_nm, csv_t.xyz_nm, atol=0.01)
    merged = {k: v for d in info for k, v in d.items()}
    assert merged["Frames"] == FRAMES and merged["Width"] == 64 and merged["Pixelsize"] == 192


def test_geometry_overrides_rescale_positions(sim, localized_csv, voxloc):
    out = sim / "half.h5"
    res = voxloc("localize", sim / "s.tif", "-o", out, "--px-nm", 96, "--dz-nm", 200, "-q")
    assert res.code == 0, res.err
    base = read_table(localized_csv)
    half, _ = read_hdf5(out)
    np.testing.assert_allclose(half.xyz_nm, base.xyz_nm / 2, atol=0.01)
    docs = list(yaml.safe_load_all(out.with_suffix(".yaml").read_text()))
    assert docs[1]["Pixelsize"] == 96.0 and docs[1]["Plane spacing (nm)"] == 200.0
