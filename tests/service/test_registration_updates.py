"""Registration updates under load: no frame set lost, the new registration applies
from the frame index the update names, and the engine applies what each set carries."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.types import FrameSet
from tests.service.conftest import wait_for

N_SETS = 300
SHIFTED = [[1.0, 0.0, 0.5], [0.0, 1.0, -0.25]]


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.affines: dict[int, list] = {}

    def observe(self, msg: object, frame_set: FrameSet) -> None:
        reg = frame_set.registration
        assert reg is not None
        self.affines[msg.frame] = np.asarray(reg.cameras["cam1"].affine).tolist()

    def stats(self) -> dict:
        return {}


@pytest.mark.timeout(120)
def test_updates_under_load_lose_nothing_and_apply_from_the_named_frame(
    make_service: object, sim_frames: tuple
) -> None:
    svc = make_service(backend="null")
    rec = Recorder()
    svc.pipeline.add_observer(rec)
    frames = sim_frames[0]
    firsts: list[int] = []

    def send() -> None:
        for i in range(N_SETS):
            svc.send_set(i, frames[i % len(frames)])

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(lambda: svc.pipeline.stats.published >= 50, "50 published sets")
    firsts.append(svc.pipeline.update_registration({"cam1": {"affine": SHIFTED}}))
    sender.join(60)
    msgs = svc.receive(N_SETS)
    assert [m.frame for m in msgs] == list(range(N_SETS))  # nothing lost, in order
    wait_for(lambda: len(rec.affines) == N_SETS, "the observer to see every set")
    (first,) = firsts
    assert 0 < first < N_SETS
    identity = np.eye(2, 3).tolist()
    assert all(rec.affines[f] == identity for f in range(first))
    assert all(rec.affines[f] == SHIFTED for f in range(first, N_SETS))
    stats = svc.stats()
    assert sum(stats["assembler"]["dropped"].values()) == 0
    assert stats["batcher"]["dropped"] == 0
