"""End to end over real sockets: four cameras, misaligned by a known affine each and
registered back by the service, 500 frame sets, one subscriber.

Exact-match part: the reference is the engine run by the test on the same uint16 camera
frames after the same registration (``PlaneWarp``, itself checked against scipy in
test_aligner.py). Rows may differ only for voxels whose confidence sits at the threshold
(batch composition changes the last float bits). Accuracy part: with the shipped model,
registered frames localize the ground truth about as well as the unmisaligned ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.ndimage as ndi

from engines.inference import create_engine
from service.aligner import PlaneWarp
from service.settings import CameraRegistration

AFFINES = [
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    [[1.0, 0.0, 1.3], [0.0, 1.0, -0.7]],
    [[np.cos(0.02), -np.sin(0.02), 0.9], [np.sin(0.02), np.cos(0.02), -0.4]],
    [[1.01, 0.0, -0.5], [0.0, 0.99, 0.8]],
]
GAINS = [2.0, 1.5, 2.5, 1.0]
BASELINES = [100.0, 90.0, 110.0, 100.0]


def misalign(ref: np.ndarray, affine: list[list[float]]) -> np.ndarray:
    """Camera image whose registration by ``affine`` gives ``ref`` (cubic, scipy)."""
    a = np.asarray(affine)
    matrix = np.array([[a[1, 1], a[1, 0]], [a[0, 1], a[0, 0]]])
    offset = [0.5 * (a[1, 0] + a[1, 1]) + a[1, 2] - 0.5, 0.5 * (a[0, 0] + a[0, 1]) + a[0, 2] - 0.5]
    return ndi.affine_transform(ref, matrix, offset=offset, order=3, mode="nearest")


def camera_frames(frames: np.ndarray) -> np.ndarray:
    """(N, 4, H, W) uint16 ADU: misaligned per camera, gain and baseline applied."""
    out = np.empty(frames.shape, np.uint16)
    for k in range(4):
        for n in range(frames.shape[0]):
            img = misalign(frames[n, k], AFFINES[k]) * GAINS[k] + BASELINES[k]
            out[n, k] = np.clip(np.round(img), 0, 65535)
    return out


def registered(cam: np.ndarray) -> np.ndarray:
    warps = [
        PlaneWarp.from_registration(
            CameraRegistration(affine=AFFINES[k], gain_adu=GAINS[k], baseline_adu=BASELINES[k]),
            64,
            64,
        )
        for k in range(4)
    ]
    return np.stack([np.stack([warps[k].apply(f[k]) for k in range(4)]) for f in cam])


def registration_body() -> dict:
    return {
        "cameras": {
            f"cam{k}": {"affine": AFFINES[k], "gain_adu": GAINS[k], "baseline_adu": BASELINES[k]}
            for k in range(4)
        }
    }


def assert_same_locs(got: np.ndarray, want: np.ndarray, threshold: float, frame: int) -> None:
    """Same rows up to float noise; rows only one side has must sit at the threshold."""
    key = lambda r: np.lexsort((r[:, 1], r[:, 2], r[:, 3]))  # noqa: E731
    got, want = got[key(got)], want[key(want)]
    if got.shape == want.shape and np.allclose(got, want, atol=1e-3, rtol=0):
        return
    g = {tuple(np.round(r[1:4], 1)) for r in got}
    w = {tuple(np.round(r[1:4], 1)) for r in want}
    odd = np.array(
        [r[4] for r in np.concatenate([got, want]) if tuple(np.round(r[1:4], 1)) in g ^ w]
    )
    assert odd.size < 3 and np.all(np.abs(odd - threshold) < 1e-3), (
        f"frame {frame}: {len(got)} rows received, {len(want)} expected; "
        f"unmatched confidences {odd[:5]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_500_misaligned_frame_sets_in_order_and_exact(
    sim_frames: tuple, make_service: Callable
) -> None:
    frames, _ = sim_frames
    cam = camera_frames(frames)
    svc = make_service()
    threshold = svc.pipeline.config.threshold
    try:
        r = svc.client.put("/registration", json=registration_body())
        assert r.status_code == 200, r.text
        for n in range(cam.shape[0]):
            svc.send_set(n, cam[n])
        msgs = svc.receive(cam.shape[0])
        stats = svc.stats()
    finally:
        svc.close()
    assert [m.frame for m in msgs] == list(range(500))
    assert [m.seq for m in msgs] == list(range(500))
    assert {m.model for m in msgs} == {"tiny"}
    assert stats["assembler"]["assembled"] == 500 and stats["rejects"] == {}
    assert stats["latency_ms"]["count"] == 500 and stats["inference"]["batches"] <= 500
    engine = create_engine("tiny", "torch")
    reference = engine.infer(registered(cam), threshold)
    assert sum(len(m.locs) for m in msgs) > 0 and any(len(m.locs) == 0 for m in msgs)
    for m, ref in zip(msgs, reference, strict=True):
        assert m.threshold == threshold
        assert_same_locs(m.locs.to_array(), ref.to_array(), threshold, m.frame)


def recall(locs: list, batch: object, n_frames: int, tol_nm: float = 250.0) -> float:
    hits = total = 0
    for b in range(n_frames):
        gt = batch.molecules(b).numpy()
        total += len(gt)
        if len(gt) and len(locs[b]):
            d = np.linalg.norm(gt[:, None, :] - locs[b].xyz_nm[None], axis=-1)
            hits += int((d.min(1) < tol_nm).sum())
    return hits / max(total, 1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_registered_frames_localize_like_aligned_ones(
    sim_frames: tuple, make_service: Callable
) -> None:
    frames, batch = sim_frames
    n = 24
    cam = camera_frames(frames[:n])
    svc = make_service(model="default", threshold=0.5)
    try:
        assert svc.client.put("/registration", json=registration_body()).status_code == 200
        for i in range(n):
            svc.send_set(i, cam[i])
        msgs = svc.receive(n)
    finally:
        svc.close()
    engine = create_engine("default", "torch")
    aligned = recall(engine.infer(frames[:n], 0.5), batch, n)
    served = recall([m.locs for m in msgs], batch, n)
    assert aligned > 0.3, f"the shipped model finds only {aligned:.0%} of the molecules"
    assert served > 0.8 * aligned, f"registered recall {served:.2f} vs aligned {aligned:.2f}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_service_runs_each_cpu_backend(
    backend: str, make_service: Callable, sim_frames: tuple
) -> None:
    frames = sim_frames[0][:16]
    svc = make_service(backend=backend)
    threshold = svc.pipeline.config.threshold
    for i in range(len(frames)):
        svc.send_set(i, frames[i])
    msgs = svc.receive(len(frames))
    served_by = svc.pipeline.models.active.engine
    assert [m.frame for m in msgs] == list(range(16))
    same = {"precision": served_by.precision} if served_by.backend == "torch" else {}
    reference = create_engine("tiny", served_by.backend, device=served_by.device, **same).infer(
        frames, threshold
    )
    for m, ref in zip(msgs, reference, strict=True):
        assert_same_locs(m.locs.to_array(), ref.to_array(), threshold, m.frame)
