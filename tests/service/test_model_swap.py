"""Model swap under load: no frame set lost, every message names the model that made it
(checked against each model's own output), a corrupt model leaves the old one serving."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polling
import pytest

from engines.inference import create_engine

BEFORE_SWAP = 120  # sets published before the swap; the rest wait for it


@pytest.fixture
def corrupt_models(tmp_path: Path, model_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``broken`` (garbage weights), ``badjson`` (unreadable model.json), next to tiny."""
    broken = tmp_path / "broken"
    shutil.copytree(model_root / "tiny", broken)
    (broken / "weights.pt").write_bytes(b"these are not torch weights")
    badjson = tmp_path / "badjson"
    shutil.copytree(model_root / "tiny", badjson)
    (badjson / "model.json").write_text('{"name": "badjson", "settings": 17}')
    monkeypatch.setenv("VOXLOC_MODELS", f"{model_root}:{tmp_path}")
    return tmp_path


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_swap_under_load_loses_nothing_and_names_the_model(
    make_service: Callable, sim_frames: tuple, corrupt_models: Path
) -> None:
    """The swap lands mid-stream by construction: the producer publishes the first
    BEFORE_SWAP sets, and the rest only once the service reports the new model."""
    svc = make_service(max_batch=4)
    frames = sim_frames[0][:300]
    threshold = svc.pipeline.config.threshold
    swapped, sent = threading.Event(), threading.Event()

    def produce() -> None:
        for i in range(BEFORE_SWAP):
            svc.send_set(i, frames[i])
        if swapped.wait(120):
            for i in range(BEFORE_SWAP, len(frames)):
                svc.send_set(i, frames[i])
            sent.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        first = svc.receive(40)
        for name in ("broken", "badjson"):
            r = svc.client.post(f"/models/{name}/load")
            assert r.status_code == 422, r.text
            assert name in r.json()["detail"] and "previous one keeps serving" in r.json()["detail"]
        assert svc.client.post("/models/nosuchmodel/load").status_code == 404
        r = svc.client.post("/models/tiny2/load")  # returns once the inference thread switched
        assert r.status_code == 200, r.text
        assert r.json()["active"]["name"] == "tiny2" and r.json()["previous"]["name"] == "tiny"
        polling.wait_for(lambda: svc.stats()["inference"]["model_swaps"] == 1, "the swap", 30)
    finally:
        swapped.set()
    rest = svc.receive(len(frames) - len(first))
    producer.join(60)
    msgs = first + rest
    assert sent.is_set()
    assert [m.frame for m in msgs] == list(range(len(frames)))
    names = [m.model for m in msgs]
    switch = names.index("tiny2")
    assert 40 <= switch < len(frames) - 1
    assert names == ["tiny"] * switch + ["tiny2"] * (len(frames) - switch)
    assert {m.model_version for m in msgs} == {"tiny-1", "tiny-2"}
    refs = {n: create_engine(n, "torch").infer(frames, threshold) for n in ("tiny", "tiny2")}
    for m in msgs[switch - 5 : switch + 5]:
        ref = refs[m.model][m.frame]
        assert len(m.locs) == len(ref), f"frame {m.frame} not from {m.model}"
        np.testing.assert_allclose(m.locs.xyz_nm, ref.xyz_nm, atol=1e-3)
    stats = svc.stats()
    assert stats["inference"]["model_swaps"] == 1
    assert stats["inference"]["failed_loads"] == 3
    assert stats["model"]["name"] == "tiny2"
    assert svc.client.get("/health/ready").json()["model"] == "tiny2"


def test_model_with_other_plane_count_is_refused(
    make_service: Callable, model_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    three = tmp_path / "three"
    shutil.copytree(model_root / "tiny", three)
    info = json.loads((three / "model.json").read_text())
    info["settings"]["geometry"]["planes"] = 3
    (three / "model.json").write_text(json.dumps(info))
    monkeypatch.setenv("VOXLOC_MODELS", f"{model_root}:{tmp_path}")
    svc = make_service()
    r = svc.client.post("/models/three/load")
    assert r.status_code == 422 and "3 planes" in r.json()["detail"]
    assert svc.client.get("/models").json()["active"]["name"] == "tiny"
