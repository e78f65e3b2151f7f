"""Every backend gives the reference localizations (torch eager float32, unfused network)."""

from __future__ import annotations

import numpy as np
import pytest
from inference_parity import BACKENDS, GPU, NO_TRT, REDUCED_PRECISIONS, reference_locs, unmatched

from engines.inference import create_engine

THRESHOLD = 0.5


@pytest.mark.parametrize(("backend", "device", "options", "tol_nm", "margin"), BACKENDS)
def test_backend_matches_reference(
    shared_model_dir, frames, backend, device, options, tol_nm, margin
):
    engine = create_engine(shared_model_dir, backend, threshold=THRESHOLD, device=device, **options)
    got = engine.infer(frames, first_frame=100)
    want = reference_locs(shared_model_dir, frames, THRESHOLD)
    assert [loc.frame for loc in got] == list(range(100, 100 + len(frames)))
    assert sum(len(w) for w in want) > 20, "too few localizations for a meaningful comparison"
    for g, w in zip(got, want, strict=True):
        missing, extra, worst = unmatched(w, g, tol_nm=tol_nm, threshold=THRESHOLD, margin=margin)
        assert (missing, extra) == (0, 0), f"frame {g.frame}: {missing} missing, {extra} extra"
        assert worst <= tol_nm
        if options.get("precision") not in REDUCED_PRECISIONS:
            np.testing.assert_allclose(np.sort(g.confidence), np.sort(w.confidence), atol=1e-3)
    engine.close()


def test_onnxruntime_equals_torch_engine(shared_model_dir, frames):
    """Acceptance: ORT vs torch, coordinates within 0.1 nm, identical sets off-threshold."""
    ort_locs = create_engine(shared_model_dir, "onnxruntime").infer(frames, threshold=0.3)
    torch_locs = create_engine(shared_model_dir, "torch").infer(frames, threshold=0.3)
    total = 0
    for a, b in zip(torch_locs, ort_locs, strict=True):
        missing, extra, worst = unmatched(a, b, tol_nm=0.1, threshold=0.3, margin=1e-4)
        assert (missing, extra, worst <= 0.1) == (0, 0, True)
        total += len(a)
    assert total > 20


@GPU
@NO_TRT
@pytest.mark.parametrize(
    ("precision", "tol_nm", "min_matched"), [("fp32", 1.0, 1.0), ("fp16", 5.0, 0.99)]
)
def test_tensorrt_matches_onnxruntime(shared_model_dir, frames, precision, tol_nm, min_matched):
    ref = create_engine(shared_model_dir, "onnxruntime").infer(frames)
    trt = create_engine(shared_model_dir, "tensorrt", device="cuda", precision=precision)
    got = trt.infer(frames)
    trt.close()
    n_ref = sum(len(r) for r in ref)
    n_missing = 0
    for r, g in zip(ref, got, strict=True):
        missing, _, worst = unmatched(r, g, tol_nm=tol_nm, threshold=0.5, margin=0.02)
        n_missing += missing
        assert worst <= tol_nm
    assert 1 - n_missing / n_ref >= min_matched
