"""The napari plugin (issue 16, item 4) in a real napari viewer (Qt offscreen).

The reader opens voxloc's CSV and HDF5 through the npe2 manifest with positions in nm in
napari's (z, y, x) order and the table's columns as features; the live widget follows a
running service (``voxloc demo``) and sets its threshold over the REST API.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("napari", reason="napari is an optional extra (.[napari]; in .[test])")
pytest.importorskip("pytestqt", reason="pytest-qt drives the Qt event loop (.[test])")
import npe2  # noqa: E402

from clients.control import ControlClient  # noqa: E402
from engines.io.loctable import (  # noqa: E402
    CSV_HEADER,
    PICASSO_FIELDS,
    TableMeta,
    open_table_writer,
)
from engines.modeldir import read_info, resolve_model  # noqa: E402
from engines.types import Localizations  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "clients" / "napari_plugin" / "napari.yaml"
PX_NM = 160.0  # not the default, so a reader that ignores the sidecar shows


@pytest.fixture(scope="module", autouse=True)
def voxloc_plugin() -> None:
    """Our manifest in npe2's plugin manager (an installed voxloc registers it by its
    entry point; a checkout on PYTHONPATH has none)."""
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    pm = npe2.PluginManager.instance()
    if manifest.name not in pm._manifests:
        pm.register(manifest)


def write_table(path: Path) -> np.ndarray:
    """Three frames of known rows with photometry and an extra column; returns
    ``(N, 10)`` wire rows."""
    rng = np.random.default_rng(3)
    locs = [
        Localizations(
            f,
            rng.uniform([0, 0, 0], [12000, 9000, 1600], (n, 3)).astype(np.float32),
            rng.uniform(0.5, 1, n).astype(np.float32),
            rng.uniform(500, 3000, n).astype(np.float32),
            rng.uniform(5, 20, n).astype(np.float32),
            rng.uniform(5, 30, (n, 3)).astype(np.float32),
        )
        for f, n in [(0, 4), (1, 0), (2, 7)]
    ]
    meta = TableMeta(frames=3, height=64, width=80, px_nm=PX_NM, dz_nm=400.0, planes=4)
    rows = np.concatenate([loc.to_array() for loc in locs])
    with open_table_writer(path, meta, extra_columns=["id"]) as w:
        w.write(locs, {"id": np.arange(len(rows), dtype=float) * 100})
    return rows


def test_manifest_is_valid_and_names_the_reader_and_widget() -> None:
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert {c.id for c in manifest.contributions.commands} == {
        "voxloc.get_reader",
        "voxloc.live_widget",
    }
    assert manifest.contributions.readers[0].filename_patterns == ["*.csv", "*.h5", "*.hdf5"]
    import tomllib

    eps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert eps["napari.manifest"]["voxloc"] == "clients.napari_plugin:napari.yaml"


@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_reader_opens_tables_in_nm_zyx_with_features(make_napari_viewer, tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    rows = write_table(path)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="voxloc")
    assert layer.ndim == 3 and layer.name == "run"
    assert np.allclose(layer.data, rows[:, [3, 2, 1]], atol=1e-3 if suffix == ".csv" else 0.02)
    assert [str(u) for u in layer.units] == ["nanometer"] * 3
    assert tuple(viewer.dims.axis_labels) == ("z", "y", "x")
    feats = layer.features
    if suffix == ".csv":  # the CSV's columns, frame from 1 as in the file
        assert list(feats.columns) == [*CSV_HEADER, "id"]
        assert list(feats["frame"]) == list(rows[:, 0] + 1)
        assert np.allclose(feats["intensity [photon]"], rows[:, 5], atol=0.05)
        assert np.allclose(feats["uncertainty_z [nm]"], rows[:, 9], atol=5e-3)
        z = feats["z [nm]"]
    else:  # Picasso's fields: frame from 0, x, y and lpx in pixels
        assert list(feats.columns) == [*PICASSO_FIELDS, "id"]
        assert list(feats["frame"]) == list(rows[:, 0])
        assert np.allclose(feats["x"], rows[:, 1] / PX_NM, atol=1e-4)
        assert np.allclose(feats["photons"], rows[:, 5], rtol=1e-6)
        assert np.allclose(feats["lpx"], rows[:, 7] / PX_NM, rtol=1e-6)
        z = feats["z"]
    assert np.allclose(feats["id"], np.arange(len(rows)) * 100)
    # coloured by z: the deepest and the shallowest points get different colours
    lo, hi = int(np.argmin(z)), int(np.argmax(z))
    assert not np.allclose(layer.face_color[lo], layer.face_color[hi])


def test_reader_leaves_other_files_alone(tmp_path: Path) -> None:
    from clients.napari_plugin.reader import get_reader

    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "x.tif")) is None


@pytest.mark.timeout(240)
def test_live_widget_follows_a_running_service(make_napari_viewer, qtbot, demo) -> None:
    from clients.napari_plugin.live import LAYER_NAME, LiveWidget

    viewer = make_napari_viewer()
    widget = LiveWidget(
        viewer, locs_endpoint=demo.locs_endpoint, url=demo.url, refresh_hz=10, max_points=300
    )
    viewer.window.add_dock_widget(widget)
    with ControlClient(demo.url) as ctl:
        before = ctl.threshold()
        try:
            qtbot.mouseClick(widget.connect_button, qtbot_left())
            assert widget.threshold_spin.value() == pytest.approx(before)
            assert widget.model_combo.currentText() == "default"
            layer = viewer.layers[LAYER_NAME]
            qtbot.waitUntil(lambda: len(layer.data) > 0, timeout=60_000)
            buf = widget.buffer
            assert len(layer.data) == len(buf.frame) == len(layer.features)
            assert np.allclose(layer.data, buf.xyz_nm[:, ::-1])
            assert np.allclose(layer.features["z [nm]"], layer.data[:, 0])
            assert "frames" in widget.status.text()
            # bounded: with a few hundred localizations per second, the oldest go
            qtbot.waitUntil(lambda: buf.discarded > 0, timeout=60_000)
            assert len(layer.data) == 300

            widget.threshold_spin.setValue(0.7)
            qtbot.mouseClick(widget.threshold_button, qtbot_left())
            assert ctl.threshold() == pytest.approx(0.7)
            assert widget.message.text() == "threshold set to 0.7"
            qtbot.waitUntil(lambda: buf.threshold == pytest.approx(0.7), timeout=30_000)

            assert not widget.refine_box.isChecked() and buf.refined is False
            widget.refine_box.click()  # as a user's click: emits clicked
            assert ctl.config()["refine"] is True
            assert widget.message.text() == "refined positions from the next batch"
            qtbot.waitUntil(lambda: buf.refined is True, timeout=30_000)
            qtbot.waitUntil(lambda: "refined" in widget.status.text(), timeout=10_000)
            widget.refine_box.click()  # as a user's click: emits clicked
            assert ctl.config()["refine"] is False
            qtbot.waitUntil(lambda: buf.refined is False, timeout=30_000)

            # another client's settings reach the controls through the stream
            ctl.set_config(threshold=0.6, refine=True)
            qtbot.waitUntil(lambda: widget.threshold_spin.value() == 0.6, timeout=30_000)
            qtbot.waitUntil(widget.refine_box.isChecked, timeout=30_000)
            ctl.set_config(refine=False)
            qtbot.waitUntil(lambda: not widget.refine_box.isChecked(), timeout=30_000)

            swaps = ctl.stats()["inference"]["model_swaps"]
            qtbot.mouseClick(widget.model_button, qtbot_left())  # reload "default"
            qtbot.waitUntil(lambda: "serving" in widget.message.text(), timeout=120_000)
            version = read_info(resolve_model("default")).version
            assert widget.message.text() == f"model default {version} serving"
            assert ctl.stats()["inference"]["model_swaps"] == swaps + 1
        finally:
            ctl.set_config(threshold=before, refine=False)
            widget.stop()
    assert widget.buffer is None and widget.connect_button.text() == "Connect"


def qtbot_left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton
