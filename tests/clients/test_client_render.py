"""Rendering: pixel placement, depth colours, colour bar, files and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clients.cli import main
from clients.render import DepthHistogram, RenderSettings, lut, render, save_image
from engines.io.loctable import LocTable, TableMeta, open_table_writer


def test_histogram_places_counts_and_mean_depth() -> None:
    hist = DepthHistogram(10.0, 100.0, 50.0)
    hist.add(np.array([[5, 5, 100], [7, 3, 300], [95, 45, 1500], [-1, 5, 0]]))
    assert hist.shape == (5, 10)
    assert hist.counts[0, 0] == 2 and hist.zsum[0, 0] == pytest.approx(400)
    assert hist.counts[4, 9] == 1
    assert (hist.total, hist.outside) == (3, 1)
    hist.add(np.array([[2000, 10, 0]]))  # beyond the grid: it grows
    assert hist.shape[1] >= 201 and hist.counts[1, 200] == 1
    hist.reset()
    assert hist.counts.sum() == 0 and hist.total == 0


def test_render_colours_by_depth() -> None:
    settings = RenderSettings(nm_per_px=10.0, z_range_nm=(0.0, 1000.0), cmap="viridis")
    rgb = render(np.array([[15, 15, 0.0], [75, 15, 1000.0]]), settings, (100.0, 30.0))
    assert rgb.shape == (3, 10, 3) and rgb.dtype == np.uint8
    table = lut("viridis")
    assert np.array_equal(rgb[1, 1], table[0]) and np.array_equal(rgb[1, 7], table[255])
    assert rgb.sum() == rgb[1, 1].sum() + rgb[1, 7].sum()  # nothing elsewhere


def test_gauss_mode_spreads_and_keeps_colour() -> None:
    settings = RenderSettings(
        nm_per_px=10.0, mode="gauss", sigma_nm=15.0, z_range_nm=(0.0, 1000.0), cmap="viridis"
    )
    rgb = render(np.array([[55, 55, 500.0]] * 3), settings, (110.0, 110.0))
    lit = rgb.sum(-1) > 0
    assert lit.sum() > 9 and lit[5, 5]
    hue = rgb[5, 5] / rgb[5, 5].max()
    ref = lut("viridis")[127] / lut("viridis")[127].max()
    assert np.allclose(hue, ref, atol=0.05)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"nm_per_px": 0}, "nm per pixel"),
        ({"mode": "dots"}, "render mode"),
        ({"z_range_nm": (5.0, 5.0)}, "z range"),
        ({"cmap": "nope"}, "unknown colour map"),
    ],
)
def test_render_settings_refuse_bad_values(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RenderSettings(**bad)


def test_save_png_with_colorbar_and_tiff(tmp_path: Path) -> None:
    settings = RenderSettings(nm_per_px=10.0)
    rgb = np.zeros((200, 120, 3), np.uint8)
    rgb[50, 60] = 255
    png = save_image(tmp_path / "a.png", rgb, settings)
    img = np.asarray(Image.open(png))
    assert img.shape[0] == 200 and img.shape[1] > 120 + 16  # image + bar + labels
    assert np.array_equal(img[:, :120], rgb)
    assert img[:, 120:].sum() > 0
    tif = save_image(tmp_path / "a.tif", rgb, settings, colorbar=False)
    assert np.array_equal(np.asarray(Image.open(tif)), rgb)
    with pytest.raises(Exception, match="png"):
        save_image(tmp_path / "a.jpg", rgb, settings)


def test_render_cli_from_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    meta = TableMeta(frames=2, height=8, width=8, px_nm=100.0, dz_nm=400.0, planes=4)
    table = LocTable(
        np.array([0, 1]), np.array([[150.0, 150, 200], [650, 650, 1400]]), np.array([0.9, 0.95])
    )
    with open_table_writer(tmp_path / "t.csv", meta) as w:
        w.write_table(table)
    out = tmp_path / "t.png"
    code = main(
        [
            "render",
            str(tmp_path / "t.csv"),
            "-o",
            str(out),
            "--nm-per-px",
            "50",
            "--fov-px",
            "8",
            "8",
            "--px-nm",
            "100",
            "--no-colorbar",
        ]
    )
    assert code == 0, capsys.readouterr().err
    img = np.asarray(Image.open(out))
    assert img.shape == (16, 16, 3)
    assert img[3, 3].sum() > 0 and img[13, 13].sum() > 0 and img.sum(-1).astype(bool).sum() == 2
    assert main(["render", str(tmp_path / "t.csv"), "-o", str(tmp_path / "t.bmp")]) == 2
    assert "t.bmp" in capsys.readouterr().err


def test_precision_splat_keeps_mass_and_mean_depth_and_has_the_sigma() -> None:
    hist = DepthHistogram(10.0, 400.0, 400.0)
    xyz = np.array([[200.0, 200.0, 300.0], [201.0, 199.0, 700.0]])
    hist.add(xyz, np.array([[30.0, 30.0], [30.0, 30.0]]))
    assert hist.total == 2 and hist.counts.sum() == pytest.approx(2, rel=1e-4)
    assert hist.zsum.sum() / hist.counts.sum() == pytest.approx(500, rel=1e-4)
    # the blur's spread is the precision: second moment along x of the counts, nm
    cols = (np.arange(hist.shape[1]) + 0.5) * 10.0
    px = hist.counts.sum(axis=0) / hist.counts.sum()
    mean = (px * cols).sum()
    assert np.sqrt((px * (cols - mean) ** 2).sum()) == pytest.approx(30.0, rel=0.03)


def test_precision_mode_blurs_each_localization_by_its_own_precision() -> None:
    settings = RenderSettings(nm_per_px=10.0, mode="precision", sigma_nm=25.0)
    xyz = np.array([[100.0, 100.0, 500.0], [300.0, 100.0, 500.0], [500.0, 100.0, 500.0]])
    precision = np.array([[5.0, 5.0, 30.0], [40.0, 40.0, 60.0], [np.nan, np.nan, np.nan]])
    rgb = render(xyz, settings, (600.0, 200.0), precision)
    lit = rgb.sum(-1) > 0
    sharp, wide, fallback = lit[:, :20].sum(), lit[:, 20:40].sum(), lit[:, 40:].sum()
    assert 0 < sharp < fallback < wide  # 5 nm < 25 nm (no precision: sigma_nm) < 40 nm
    plain = render(xyz, settings.model_copy(update={"mode": "hist"}), (600.0, 200.0), precision)
    assert (plain.sum(-1) > 0).sum() == 3  # hist mode ignores the precision
    empty = render(np.zeros((0, 3)), settings, (600.0, 200.0), np.zeros((0, 3)))
    assert empty.shape == (20, 60, 3) and not empty.any()  # frame sets without localizations


def test_render_cli_precision_mode_reads_the_tables_precision(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    meta = TableMeta(frames=1, height=8, width=8, px_nm=100.0, dz_nm=400.0, planes=4)
    table = LocTable(
        np.array([0, 0]),
        np.array([[200.0, 400, 500], [600, 400, 500]]),
        np.array([0.9, 0.9]),
        precision_nm=np.array([[5.0, 5, 20], [np.nan, np.nan, np.nan]]),
    )
    with open_table_writer(tmp_path / "t.h5", meta) as w:
        w.write_table(table)
    out = tmp_path / "t.png"
    args = ["render", str(tmp_path / "t.h5"), "-o", str(out), "--nm-per-px", "10"]
    assert main([*args, "--mode", "precision", "--sigma-nm", "40", "--no-colorbar"]) == 0
    assert "1 of 2 localizations have no precision: blurred with --sigma-nm 40" in (
        capsys.readouterr().out
    )
    img = np.asarray(Image.open(out)).sum(-1) > 0
    assert 0 < img[:, :40].sum() < img[:, 40:].sum()  # the precise one is the sharper
