"""Batcher: a bounded queue of frame sets between the aligner and the engine.

``get_batch`` returns up to ``max_batch`` sets, waiting at most ``max_delay_s`` after the
oldest queued set arrived (Triton's ``max_queue_delay``). When the queue is full the
named :class:`~service.settings.DropPolicy` decides; every drop is counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from service.settings import DropPolicy
from service.stats import ServiceStats
from service.types import Batch, FrameSet

STREAMING_S = 0.1  # a set queued this recently: sets are streaming in (see _wait_first)


class Batcher:
    def __init__(self, *, queue_size: int, policy: DropPolicy, stats: ServiceStats) -> None:
        self._queue: deque[tuple[float, FrameSet]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # waking a thread costs far more than a put (it holds the GIL through the wake-up,
        # and on a busy machine the woken thread preempts it): a put wakes the consumer
        # only once the queue holds what it waits for, the consumer wakes blocked puts only
        self._wants: list[int] = []  # sets each waiting get_batch waits for
        self._blocked = 0  # puts waiting for room (``block``)
        self._last_put_s = float("-inf")
        self.stats = stats
        self.queue_size = queue_size
        self.policy = DropPolicy(policy)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def configure(
        self, *, queue_size: int | None = None, policy: DropPolicy | str | None = None
    ) -> None:
        """Change size or policy at run time; shrinking drops the oldest (counted)."""
        with self._cond:
            if policy is not None:
                self.policy = DropPolicy(policy)
            if queue_size is not None:
                if queue_size < 1:
                    raise ValueError(f"queue_size must be >= 1, got {queue_size}")
                self.queue_size = queue_size
                excess = len(self._queue) - queue_size
                for _ in range(max(excess, 0)):
                    self._queue.popleft()[1].release()
                if excess > 0:
                    self.stats.queue_dropped("resize", excess)
            self._cond.notify_all()

    def put(self, frame_set: FrameSet) -> float:
        """Queue a frame set; returns the seconds spent blocked (``block`` policy only)."""
        blocked_s = 0.0
        with self._cond:
            if len(self._queue) >= self.queue_size and not self._closed:
                if self.policy is DropPolicy.DROP_OLDEST:
                    self._queue.popleft()[1].release()
                    self.stats.queue_dropped(self.policy.value)
                elif self.policy is DropPolicy.REJECT:
                    self.stats.queue_dropped(self.policy.value)
                    frame_set.release()
                    return 0.0
                else:
                    t0 = time.monotonic()
                    self._blocked += 1
                    try:
                        while (
                            len(self._queue) >= self.queue_size
                            and not self._closed
                            and self.policy is DropPolicy.BLOCK
                        ):
                            self._cond.wait(0.1)
                    finally:
                        self._blocked -= 1
                    blocked_s = time.monotonic() - t0
                    if len(self._queue) >= self.queue_size:  # closed or policy changed
                        self._queue.popleft()[1].release()
                        self.stats.queue_dropped(self.policy.value)
            self._last_put_s = now = time.monotonic()
            self._queue.append((now, frame_set))
            if self._wants and len(self._queue) >= min(self._wants):
                self._cond.notify_all()
        return blocked_s

    def get_batch(self, max_batch: int, max_delay_s: float, timeout_s: float) -> Batch | None:
        """Up to ``max_batch`` sets, or None if nothing arrived within ``timeout_s``."""
        with self._cond:
            if not self._queue:
                self._wait_first(max_batch, max_delay_s, timeout_s)
                if not self._queue:
                    return None
            deadline = self._queue[0][0] + max_delay_s
            while len(self._queue) < max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wait(max_batch, left)
            n = min(max_batch, len(self._queue))
            sets = [self._queue.popleft()[1] for _ in range(n)]
            if self._blocked:
                self._cond.notify_all()
        return Batch(sets)

    def _wait_first(self, max_batch: int, max_delay_s: float, timeout_s: float) -> None:
        """Wait (lock held) up to ``timeout_s`` for a first set. While sets stream in
        (one was queued within ``STREAMING_S``), look every ``max_delay_s`` instead of
        being woken by each first put: a set may wait that long for its batch anyway
        (the deadline in :meth:`get_batch`), so no batch leaves later. Only a full batch
        wakes this thread then; after a pause, the first put does."""
        end = time.monotonic() + timeout_s
        while not self._queue and not self._closed:
            now = time.monotonic()
            left = end - now
            if left <= 0:
                return
            if max_delay_s > 0 and now - self._last_put_s < STREAMING_S:
                self._wait(max_batch, min(left, max_delay_s))
            else:
                self._wait(1, left)

    def _wait(self, sets: int, timeout_s: float) -> None:
        """Wait (lock held) until the queue holds ``sets``, a change, or ``timeout_s``."""
        self._wants.append(sets)
        try:
            self._cond.wait(timeout_s)
        finally:
            self._wants.remove(sets)

    def close(self) -> None:
        """Wake every waiter; later puts no longer block."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
