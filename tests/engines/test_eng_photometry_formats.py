"""Photons, background and precision in every table format, read back and by the real
tools (Picasso, locan); tables and rows from before photometry still read."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
import yaml

from engines.config import NoiseParams, SimSettings
from engines.io.loctable import (
    TableMeta,
    camera_info,
    model_meta,
    open_table_writer,
    read_hdf5,
    read_table,
)
from engines.io.streamtable import open_stream_writer
from engines.psf import width_nm
from engines.psf_width import PsfWidth
from engines.types import LEGACY_LOC_COLUMNS, LOC_COLUMNS, Localizations

PX = 192.0
SETTINGS = SimSettings()


def _meta(**kw) -> TableMeta:
    return TableMeta(frames=4, height=32, width=48, px_nm=PX, dz_nm=400.0, planes=4, **kw)


def _locs(rng: np.random.Generator, frames: int = 4, n: int = 5) -> list[Localizations]:
    out = []
    for f in range(frames):
        xyz = np.column_stack(
            [rng.uniform(200, 9000, n), rng.uniform(200, 6000, n), rng.uniform(0, 1600, n)]
        ).astype(np.float32)
        out.append(
            Localizations(
                f,
                xyz,
                rng.uniform(0.5, 1, n).astype(np.float32),
                rng.uniform(500, 5000, n).astype(np.float32),
                rng.uniform(2, 30, n).astype(np.float32),
                rng.uniform(4, 40, (n, 3)).astype(np.float32),
            )
        )
    return out


def _columns(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    data = np.array(rows[1:], dtype=np.float64).reshape(-1, len(rows[0]))
    return {name: data[:, i] for i, name in enumerate(rows[0])}


def _concat(locs: list[Localizations], name: str) -> np.ndarray:
    return np.concatenate([getattr(loc, name) for loc in locs]).astype(np.float64)


def test_localizations_rows_round_trip_and_legacy_rows():
    loc = _locs(np.random.default_rng(0), frames=1)[0]
    rows = loc.to_array()
    assert rows.shape == (5, len(LOC_COLUMNS)) == (5, 10)
    back = Localizations.from_array(0, rows)
    for name in ("xyz_nm", "confidence", "photons", "background", "precision_nm"):
        np.testing.assert_array_equal(getattr(back, name), getattr(loc, name))
    legacy = Localizations.from_array(0, rows[:, : len(LEGACY_LOC_COLUMNS)])
    np.testing.assert_array_equal(legacy.xyz_nm, loc.xyz_nm)
    assert np.isnan(legacy.photons).all() and np.isnan(legacy.precision_nm).all()
    with pytest.raises(ValueError, match=r"expected rows of 10 \(or 5\) localization columns"):
        Localizations.from_array(0, rows[:, :7])


@pytest.mark.parametrize(
    "name, stream",
    [("t.csv", False), ("t.h5", False), ("t.smlm", False), ("t.csv", True), ("t.h5", True)],
)
def test_every_format_round_trips_photometry_and_precision(tmp_path, name, stream):
    locs = _locs(np.random.default_rng(1))
    out = tmp_path / name
    if stream:
        writer = open_stream_writer(out, _meta())
        writer.append(locs)
        writer.close()
    else:
        with open_table_writer(out, _meta()) as w:
            w.write(locs)
    table = read_table(out)
    np.testing.assert_allclose(table.photons, _concat(locs, "photons"), atol=0.05)
    np.testing.assert_allclose(table.background, _concat(locs, "background"), atol=5e-4)
    np.testing.assert_allclose(table.precision_nm, _concat(locs, "precision_nm"), atol=5e-3)
    assert table.extra == {}  # derived columns are recomputed, not kept


def test_csv_derived_thunderstorm_columns(tmp_path):
    locs = _locs(np.random.default_rng(2))
    out = tmp_path / "t.csv"
    with open_table_writer(out, _meta()) as w:
        w.write(locs)
    col = _columns(out)
    bg, sigma = _concat(locs, "background"), _concat(locs, "precision_nm")
    np.testing.assert_allclose(col["bkgstd [photon]"], np.sqrt(bg), atol=5e-4)
    xy = np.sqrt((sigma[:, 0] ** 2 + sigma[:, 1] ** 2) / 2)
    np.testing.assert_allclose(col["uncertainty_xy [nm]"], xy, atol=5e-3)
    np.testing.assert_allclose(col["uncertainty_z [nm]"], sigma[:, 2], atol=5e-3)


def test_hdf5_precision_in_pixels_and_camera_in_yaml(tmp_path):
    locs = _locs(np.random.default_rng(3))
    noise = NoiseParams(mode="emccd", baseline_adu=98.0, e_per_adu=11.0, em_gain=150.0, qe=0.8)
    out = tmp_path / "t.h5"
    with open_table_writer(out, _meta(camera=camera_info(noise))) as w:
        w.write(locs)
    with h5py.File(out, "r") as f:
        rec = f["locs"][...]
    sigma = _concat(locs, "precision_nm")
    np.testing.assert_allclose(rec["lpx"], sigma[:, 0] / PX, rtol=1e-6)
    np.testing.assert_allclose(rec["lpy"], sigma[:, 1] / PX, rtol=1e-6)
    np.testing.assert_allclose(rec["lpz"], sigma[:, 2], rtol=1e-6)  # nm
    np.testing.assert_allclose(rec["bg"], _concat(locs, "background"), rtol=1e-6)
    movie = next(yaml.safe_load_all((tmp_path / "t.yaml").read_text()))
    assert movie["Camera"] == "emccd" and movie["Baseline"] == 98.0
    assert movie["Sensitivity"] == 11.0 and movie["Gain"] == 150.0 and movie["Qe"] == 0.8


def test_smlm_file_manifest_units_and_locan(tmp_path):
    import json
    import zipfile

    locs = _locs(np.random.default_rng(8))
    out = tmp_path / "t.smlm"
    with open_table_writer(out, _meta(source="stack.tif"), extra_columns=("id",)) as w:
        w.write(locs, {"id": np.arange(20.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.smlm"]  # no temp left
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    fmt = manifest["formats"]["smlm-table(binary)"]
    assert manifest["format_version"] == "0.2" and manifest["files"][0]["rows"] == 20
    assert fmt["headers"][:3] == ["frame", "x", "y"] and fmt["headers"][-1] == "id"
    assert dict(zip(fmt["headers"], fmt["units"], strict=True))["x_precision"] == "nm"
    assert manifest["voxloc"][1]["Pixelsize"] == PX
    table = read_table(out)
    assert table.frame.tolist() == [f for f in range(4) for _ in range(5)]  # from 0
    assert table.extra["id"].tolist() == list(range(20))
    locan = pytest.importorskip("locan", reason="locan is a test dependency")
    data = locan.load_SMLM_file(out).data
    np.testing.assert_allclose(data["position_x"], _concat(locs, "xyz_nm")[:, 0], rtol=1e-6)
    np.testing.assert_allclose(data["intensity"], _concat(locs, "photons"), rtol=1e-6)
    np.testing.assert_allclose(data["local_background"], _concat(locs, "background"), rtol=1e-6)


def test_smlm_is_not_a_stream_format(tmp_path):
    from engines.errors import FormatError

    with pytest.raises(FormatError, match=r"cannot be recorded as a stream; record to .csv"):
        open_stream_writer(tmp_path / "rec.smlm", _meta())
    assert not (tmp_path / "rec.smlm").exists()


def test_psf_width_is_the_models_sharpest_plane_sigma():
    width = PsfWidth.from_settings(SETTINGS)
    z = np.linspace(0, 1600, 33)
    focal = torch.tensor(SETTINGS.focal_planes_nm(), dtype=torch.float64)
    expected = width_nm(torch.tensor(z)[:, None] - focal, SETTINGS.psf).amin(dim=1).numpy()
    np.testing.assert_allclose(width(z), expected, rtol=0.01)
    scaled = width.scaled(lateral=0.5, axial=2.0)
    np.testing.assert_allclose(scaled(2 * z), expected / 2, rtol=0.01)


def test_tables_with_the_models_psf_width(tmp_path):
    locs = _locs(np.random.default_rng(4))
    meta = _meta(**model_meta(SETTINGS, px_nm=PX, dz_nm=400.0))
    with open_table_writer(tmp_path / "t.csv", meta) as w:
        w.write(locs)
    with open_table_writer(tmp_path / "t.h5", meta) as w:
        w.write(locs)
    expected = PsfWidth.from_settings(SETTINGS)(_concat(locs, "xyz_nm")[:, 2])
    col = _columns(tmp_path / "t.csv")
    np.testing.assert_allclose(col["sigma1 [nm]"], expected, atol=1e-3)
    np.testing.assert_array_equal(col["sigma1 [nm]"], col["sigma2 [nm]"])
    table, _ = read_hdf5(tmp_path / "t.h5")
    np.testing.assert_allclose(table.extra["sx"], expected / PX, rtol=1e-5)  # pixels
    assert 130 < expected.min() and expected.max() < 170  # r0 = 133 nm, within 1 dz/2


def test_tables_from_before_photometry_read_with_nan(tmp_path):
    old_csv = tmp_path / "old.csv"
    old_csv.write_text("frame,x [nm],y [nm],z [nm],confidence\n1,96.0,192.0,100.0,0.9\n")
    table = read_table(old_csv)
    assert table.frame.tolist() == [0] and table.xyz_nm.tolist() == [[96.0, 192.0, 100.0]]
    assert np.isnan(table.photons).all() and np.isnan(table.background).all()
    assert np.isnan(table.precision_nm).all()
    old_h5 = tmp_path / "old.h5"
    dtype = [("frame", "u4"), ("x", "f4"), ("y", "f4"), ("z", "f4"), ("confidence", "f4")]
    with h5py.File(old_h5, "w") as f:
        f["locs"] = np.array([(2, 0.5, 1.0, 650.0, 0.75)], dtype)
    (tmp_path / "old.yaml").write_text(yaml.dump_all([{"Frames": 3}, {"Pixelsize": PX}]))
    table = read_table(old_h5)
    np.testing.assert_allclose(table.xyz_nm, [[96.0, 192.0, 650.0]])
    assert np.isnan(table.photons).all() and np.isnan(table.precision_nm).all()


def test_a_thunderstorm_csv_with_only_uncertainty_xy(tmp_path):
    path = tmp_path / "ts.csv"
    path.write_text(
        "frame,x [nm],y [nm],z [nm],confidence,intensity [photon],uncertainty_xy [nm],id\n"
        "1,10,20,30,1,1500,12.5,7\n"
    )
    table = read_table(path)
    assert table.photons.tolist() == [1500.0] and np.isnan(table.background).all()
    assert table.precision_nm[0, :2].tolist() == [12.5, 12.5]
    assert np.isnan(table.precision_nm[0, 2]) and table.extra == {"id": pytest.approx([7.0])}


def test_partly_unknown_photometry_stays_nan_per_row(tmp_path):
    locs = _locs(np.random.default_rng(5), frames=1, n=3)
    photons = locs[0].photons.copy()
    photons[1] = np.nan
    locs = [Localizations(0, locs[0].xyz_nm, locs[0].confidence, photons)]  # no precision
    for name in ("t.csv", "t.h5"):
        with open_table_writer(tmp_path / name, _meta()) as w:
            w.write(locs)
        table = read_table(tmp_path / name)
        assert np.isnan(table.photons).tolist() == [False, True, False]
        assert np.isnan(table.precision_nm).all() and np.isnan(table.background).all()


def test_picasso_imports_the_csv_and_renders_the_hdf5_with_precision(tmp_path):
    pio = pytest.importorskip("picasso.io", reason="picassosr is a test dependency")
    from picasso import postprocess, render

    locs = _locs(np.random.default_rng(6), frames=40, n=10)
    meta = _meta(**model_meta(SETTINGS, px_nm=PX, dz_nm=400.0))
    for name in ("t.csv", "t.h5"):
        with open_table_writer(tmp_path / name, meta) as w:
            w.write(locs)
    imported, _ = pio.import_ts(str(tmp_path / "t.csv"), PX)
    assert len(imported) == 400
    np.testing.assert_allclose(
        np.sort(imported["lpx"]),
        np.sort(_columns(tmp_path / "t.csv")["uncertainty_xy [nm]"] / PX),
        rtol=1e-5,
    )
    loaded, info = pio.load_locs(str(tmp_path / "t.h5"))
    n, image = render.render(loaded, info, disp_px_size=20.0, blur_method="gaussian")
    assert n == 400 and image.sum() > 0.95 * 400
    _, nena_px = postprocess.nena(loaded, info)
    assert np.isfinite(nena_px) and nena_px > 0


def test_locan_reads_the_csv_with_its_uncertainties(tmp_path):
    locan = pytest.importorskip("locan", reason="locan is a test dependency")
    locs = _locs(np.random.default_rng(7))
    with open_table_writer(tmp_path / "t.csv", _meta()) as w:
        w.write(locs)
    data = locan.load_thunderstorm_file(tmp_path / "t.csv").data
    np.testing.assert_allclose(data["intensity"], _concat(locs, "photons"), atol=0.05)
    np.testing.assert_allclose(data["local_background"], _concat(locs, "background"), atol=5e-4)
    np.testing.assert_allclose(
        data["uncertainty_z"], _concat(locs, "precision_nm")[:, 2], atol=5e-3
    )


def test_psf_width_of_a_spline_model_is_its_psfs(tmp_path):
    from engines.psf_model import spline_ref
    from tests.engines.test_spline_psf import SETTINGS as SPLINE_BASE
    from tests.engines.test_spline_psf import gaussian_spline

    path = gaussian_spline(SPLINE_BASE, roi_px=25).save(tmp_path / "gauss.npz")
    psf = SPLINE_BASE.psf.model_copy(update={"spline": spline_ref(path)})
    spline = PsfWidth.from_settings(SPLINE_BASE.model_copy(update={"psf": psf}))
    gauss = PsfWidth.from_settings(SPLINE_BASE)  # the Gaussian the spline was sampled from
    z = np.linspace(0, SPLINE_BASE.geometry.depth_nm, 17)
    np.testing.assert_allclose(spline(z), gauss(z), rtol=0.03)
