"""torch on CUDA: CUDA graphs captured once per (padded) shape, bounded in number."""

from __future__ import annotations

import numpy as np
from inference_parity import GPU, NO_CUDA

from engines.inference import create_engine


@GPU
@NO_CUDA
def test_cuda_graphs_are_reused_and_bounded(shared_model_dir, frames):
    engine = create_engine(shared_model_dir, "torch", device="cuda", cuda_graphs=True, max_graphs=2)
    a = engine.infer(frames[:3])  # padded to 4
    b = engine.infer(frames[:4])  # same padded shape: no new graph
    assert list(engine._graphs) == [("frames", (4, 4, 48, 40))]
    for loc_a, loc_b in zip(a, b[:3], strict=True):
        np.testing.assert_array_equal(loc_a.xyz_nm, loc_b.xyz_nm)
    assert len(b) == 4
    engine.infer(frames[:1])
    engine.infer(frames[:2, :, :32, :32])
    assert len(engine._graphs) == 2
    engine.close()


@GPU
@NO_CUDA
def test_photometry_on_cuda_matches_the_cpu(shared_model_dir, frames):
    """Photons and background on the device, in the CUDA-graph raw path too."""
    from engines.inference.registration import PlaneRegistration

    reg = PlaneRegistration.create(
        affine_px=np.broadcast_to(np.eye(2, 3), (4, 2, 3)), gain_adu=2.0, baseline_adu=100.0
    )
    raw = np.round(frames * 2.0 + 100.0).astype(np.uint16)
    cpu = create_engine(shared_model_dir, "torch")
    gpu = create_engine(shared_model_dir, "torch", device="cuda", cuda_graphs=True)
    want = cpu.infer_raw(raw, reg)
    for got in (gpu.infer_raw(raw, reg), gpu.submit_raw(raw, reg).result()):
        for a, b in zip(got, want, strict=True):
            assert len(a) == len(b)
            np.testing.assert_allclose(a.photons, b.photons, rtol=1e-2)
            np.testing.assert_allclose(a.background, b.background, rtol=1e-2, atol=0.05)
    cpu.close()
    gpu.close()


@GPU
@NO_CUDA
def test_a_batch_is_refined_as_submitted_though_collected_later(shared_model_dir, frames):
    """On CUDA the photometry runs at collection; the service submits the next batch
    first, so each batch carries its own refine setting (Engine.submit_raw)."""
    from engines.inference.registration import PlaneRegistration

    reg = PlaneRegistration.identity(4)
    gpu = create_engine(shared_model_dir, "torch", device="cuda")
    assert gpu.async_raw
    plain = gpu.infer_raw(frames, reg)
    gpu.refine = True
    refined = gpu.infer_raw(frames, reg)
    gpu.refine = False
    first = gpu.submit_raw(frames, reg, refine=True)
    second = gpu.submit_raw(frames, reg, refine=False)  # before the first is collected
    for got, want in ((first.result(), refined), (second.result(), plain)):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a.xyz_nm, b.xyz_nm, atol=1e-2)
    assert gpu.refine is False
    gpu.close()
