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


def test_a_batch_submitted_with_refine_is_refined_whatever_the_engine_default():
    """The service's refine setting travels with each batch (Engine.submit_raw), so a
    batch is measured as it was submitted even where it is collected later."""
    model_dir = SHIPPED_MODELS / "default"
    engine = create_engine(model_dir, "onnxruntime")
    sim = Simulator(engine.info.settings, seed=5)
    frames = sim.sample(4, 30, height=48, width=48, drift=True).frames.numpy()
    sets = [FrameSet(i, f, 0, 0) for i, f in enumerate(frames)]
    model = LoadedModel(engine, "default", "1", "onnxruntime", model_dir)
    plain = run_batch(model, Batch(sets), 0.5)
    refined = run_batch(model, Batch(sets), 0.5, refine=True)
    assert engine.refine is False  # the call's own setting, not the engine's
    engine.refine = True
    want = engine.infer(frames)
    engine.refine = False
    for a, b in zip(refined, want, strict=True):
        np.testing.assert_allclose(a.xyz_nm, b.xyz_nm, atol=1e-3)
        np.testing.assert_allclose(a.precision_nm, b.precision_nm, rtol=1e-4)
    moved = np.concatenate([a.xyz_nm - p.xyz_nm for a, p in zip(refined, plain, strict=True)])
    assert np.abs(moved).max() > 1.0  # the refinement did move positions
    sigma = np.concatenate([a.precision_nm for a in refined])
    assert np.median(sigma[:, 0]) < 0.7 * np.median(
        np.concatenate([p.precision_nm for p in plain])[:, 0]
    )
    engine.close()
