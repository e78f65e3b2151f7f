"""The null backend: the engine interface without device compute (a measurement tool)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.errors import FormatError
from engines.inference import create_engine
from engines.inference.factory import candidates


def test_null_engine_validates_like_the_others_and_returns_nothing() -> None:
    engine = create_engine("default", "null")
    assert engine.label == "null/cpu" and engine.planes == 4
    frames = np.full((3, 4, 32, 32), 120, np.uint16)
    out = engine.infer(frames, 0.5, first_frame=7)
    assert [r.frame for r in out] == [7, 8, 9]
    assert all(len(r.xyz_nm) == 0 and r.xyz_nm.shape == (0, 3) for r in out)
    with pytest.raises(FormatError, match="expects 4 planes"):
        engine.infer(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        engine.infer(frames, 1.5)


def test_auto_never_picks_the_null_engine() -> None:
    assert all(c.backend != "null" for c in candidates())
