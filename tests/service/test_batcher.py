"""Batcher queue: batch size and delay, the three drop policies and their counters."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.batcher import Batcher
from service.settings import DropPolicy
from service.stats import ServiceStats
from service.types import FrameSet


def fs(frame: int) -> FrameSet:
    return FrameSet(frame, np.zeros((1, 1, 1), np.float32), 0, 0)


def batcher(size: int, policy: DropPolicy) -> Batcher:
    return Batcher(queue_size=size, policy=policy, stats=ServiceStats([]))


def test_batches_up_to_max_batch_in_order() -> None:
    b = batcher(16, DropPolicy.BLOCK)
    for i in range(5):
        b.put(fs(i))
    assert [s.frame for s in b.get_batch(3, 10.0, 1.0).sets] == [0, 1, 2]
    # fewer than max_batch queued: returns after max_delay with what is there
    assert [s.frame for s in b.get_batch(8, 0.01, 1.0).sets] == [3, 4]
    assert b.get_batch(8, 0.01, 0.01) is None


@pytest.mark.parametrize(
    ("policy", "kept"), [(DropPolicy.DROP_OLDEST, [2, 3, 4]), (DropPolicy.REJECT, [0, 1, 2])]
)
def test_full_queue_drops_by_policy_and_counts(policy: DropPolicy, kept: list) -> None:
    b = batcher(3, policy)
    for i in range(5):
        b.put(fs(i))
    assert [s.frame for s in b.get_batch(8, 0.0, 1.0).sets] == kept
    assert b.stats.queue_drops == 2


@pytest.mark.timeout(10)
def test_block_policy_waits_for_the_consumer_and_loses_nothing() -> None:
    b = batcher(2, DropPolicy.BLOCK)
    got: list[int] = []

    def consume() -> None:
        while len(got) < 20:
            batch = b.get_batch(4, 0.0, 5.0)
            got.extend(s.frame for s in batch.sets)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(20):
        b.put(fs(i))
    t.join(5)
    assert got == list(range(20)) and b.stats.queue_drops == 0


def test_shrinking_the_queue_counts_the_dropped_sets() -> None:
    b = batcher(8, DropPolicy.BLOCK)
    for i in range(6):
        b.put(fs(i))
    b.configure(queue_size=2, policy=DropPolicy.REJECT)
    assert b.stats.queue_drops == 4 and b.policy is DropPolicy.REJECT
    assert [s.frame for s in b.get_batch(8, 0.0, 1.0).sets] == [4, 5]
