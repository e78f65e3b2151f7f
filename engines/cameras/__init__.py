"""Camera noise models (paper Table 3, EMCCD, sCMOS), one module per camera.

Each module registers its :class:`Camera` under the ``NoiseParams.mode`` it serves, and
this package imports every module in it: a new camera is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from engines.cameras.base import Camera, camera_class, camera_modes, cast_frames, register

__all__ = ["Camera", "camera_class", "camera_modes", "cast_frames", "register"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
