"""Screenshot of a voxloc table in napari through the plugin's reader (docs/napari.png).

    python scripts/napari_screenshot.py run.csv docs/napari.png

Needs a display: on a headless machine run it under ``xvfb-run -a`` (Xvfb plus the xcb
libraries Qt's xcb platform loads); ``QT_QPA_PLATFORM=offscreen`` has no OpenGL to draw with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari

from clients.napari_plugin.reader import table_layer


def main(table: str, out: str) -> None:
    data, kwargs, _ = table_layer(Path(table))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(900, 700)
    viewer.add_points(data, **kwargs)
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (0, -35, 55)
    viewer.camera.zoom *= 1.15
    viewer.screenshot(path=out, canvas_only=False, flash=False)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
