"""The service's engine stage hands on each localization's photometry (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.inference import create_engine
from engines.modeldir import SHIPPED_MODELS
from engines.simulator import Simulator
from service.inference import LoadedModel, run_batch
from service.types import Batch, FrameSet


@pytest.mark.parametrize("indices", [[100, 101, 102], [100, 101, 105]], ids=["run", "gap"])
def test_collected_localizations_keep_photons_background_and_precision(indices):
    """Each set's own frame index comes back (after a dropped set too), with the rest."""
    model_dir = SHIPPED_MODELS / "default"
    engine = create_engine(model_dir, "onnxruntime")
    frames = Simulator(engine.info.settings, seed=4).sample(3, 15, height=32, width=32)
    sets = [FrameSet(i, f, 0, 0) for i, f in zip(indices, frames.frames.numpy(), strict=True)]
    model = LoadedModel(engine, "default", "1", "onnxruntime", model_dir)
    got = run_batch(model, Batch(sets), 0.5)
    want = engine.infer(frames.frames.numpy())
    assert [loc.frame for loc in got] == indices
    for a, b in zip(got, want, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.photons, b.photons, rtol=1e-5)
        np.testing.assert_allclose(a.background, b.background, rtol=1e-5)
        np.testing.assert_allclose(a.precision_nm, b.precision_nm, rtol=1e-5)
    assert np.isfinite(np.concatenate([loc.photons for loc in got])).all()
    engine.close()
