"""Registration on the engine's device matches the service's host warp (``PlaneWarp``,
the reference, itself checked against scipy in test_aligner.py)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from engines.inference import create_engine
from engines.inference.checks import register_on_host
from engines.inference.registration import PlaneRegistration
from service.aligner import PlaneWarp

AFFINES = [
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    [[1.0, 0.0, 1.3], [0.0, 1.0, -0.7]],
    [[np.cos(0.02), -np.sin(0.02), 0.9], [np.sin(0.02), np.cos(0.02), -0.4]],
    [[1.01, 0.0, -0.5], [0.0, 0.99, 0.8]],
]
GAINS = [2.0, 1.5, 2.5, 1.0]
BASELINES = [100.0, 90.0, 110.0, 100.0]

BACKENDS = [
    pytest.param("torch", "cpu", {"precision": "fp32"}, id="torch-cpu"),
    pytest.param("onnxruntime", "cpu", {}, id="onnxruntime-cpu"),
    pytest.param("null", "cpu", {}, id="null"),
    pytest.param(
        "torch",
        "cuda",
        {"cuda_graphs": True},
        id="torch-cuda-graphs",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    ),
    pytest.param(
        "torch",
        "cuda",
        {},
        id="torch-cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    ),
    pytest.param(  # raw frames registered on the GPU by torch, then the TensorRT engine
        "tensorrt",
        "cuda",
        {},
        id="tensorrt",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and importlib.util.find_spec("tensorrt")),
            reason="needs a CUDA GPU and TensorRT (pip install voxloc[tensorrt])",
        ),
    ),
]


def registration(shift: float = 0.0) -> PlaneRegistration:
    a = np.array(AFFINES)
    a[:, 0, 2] += shift
    return PlaneRegistration.create(affine_px=a, gain_adu=GAINS, baseline_adu=BASELINES)


def host_registered(raw: np.ndarray, reg: PlaneRegistration) -> np.ndarray:
    h, w = raw.shape[2:]
    warps = [
        PlaneWarp(
            affine=reg.affine_px[k],
            height=h,
            width=w,
            gain_adu=float(reg.gain_adu[k]),
            baseline_adu=float(reg.baseline_adu[k]),
        )
        for k in range(raw.shape[1])
    ]
    return np.stack([np.stack([warps[k].apply(f[k]) for k in range(len(f))]) for f in raw])


def camera_frames(dtype: str, n: int = 3, h: int = 40, w: int = 56) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(90, 1500, (n, 4, h, w)).astype(dtype)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_input_stage_matches_the_host_warp(dtype: str) -> None:
    raw = camera_frames(dtype)
    reg = registration()
    got = register_on_host(list(raw), reg)
    want = host_registered(raw, reg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_uint16_values_above_int16_survive() -> None:
    raw = np.full((1, 4, 8, 8), 65000, np.uint16)
    got = register_on_host(list(raw), PlaneRegistration.identity(4))
    assert np.all(got == 65000.0)


@pytest.mark.parametrize(("backend", "device", "options"), BACKENDS)
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_raw_frames_localize_like_host_registered_frames(
    backend: str, device: str, options: dict, dtype: str
) -> None:
    engine = create_engine("default", backend, device=device, **options)
    raw = camera_frames(dtype, n=3, h=48, w=64)
    for shift in (0.0, 0.75):  # a new registration: no rebuild, new result
        reg = registration(shift)
        want = engine.infer(host_registered(raw, reg), 0.3, first_frame=5)
        got = engine.infer_raw(list(raw), reg, 0.3, first_frame=5)
        assert [g.frame for g in got] == [5, 6, 7]
        for g, w in zip(got, want, strict=True):
            assert len(g.xyz_nm) == len(w.xyz_nm)
            np.testing.assert_allclose(g.xyz_nm, w.xyz_nm, atol=0.05)
            np.testing.assert_allclose(g.confidence, w.confidence, atol=1e-4)
    engine.close()


def test_raw_frames_of_mixed_shapes_are_refused() -> None:
    engine = create_engine("default", "null")
    a, b = np.zeros((4, 8, 8), np.uint16), np.zeros((4, 8, 8), np.float32)
    with pytest.raises(Exception, match="every frame set"):
        engine.infer_raw([a, b], PlaneRegistration.identity(4))


@pytest.mark.parametrize(("backend", "device", "options"), BACKENDS)
def test_submitted_batches_collect_in_order_like_infer_raw(
    backend: str, device: str, options: dict
) -> None:
    """Two batches in flight (on CUDA the second one's copy overlaps the first's
    compute, into the other of the two device batches) give what infer_raw gives."""
    engine = create_engine("default", backend, device=device, **options)
    raw = camera_frames("uint16", n=6, h=48, w=64)
    reg = registration(0.5)
    first = engine.submit_raw(list(raw[:3]), reg, 0.3, first_frame=0)
    second = engine.submit_raw(list(raw[3:]), reg, 0.3, first_frame=3)
    got = first.result() + second.result()
    want = engine.infer_raw(list(raw), reg, 0.3)
    assert [g.frame for g in got] == list(range(6))
    for g, w in zip(got, want, strict=True):
        assert len(g.xyz_nm) == len(w.xyz_nm)
        np.testing.assert_allclose(g.xyz_nm, w.xyz_nm, atol=0.05)
    engine.close()
