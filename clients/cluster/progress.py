"""Progress of a distributed run over all inputs: frames done / total, frames/s, engines."""

from __future__ import annotations

import time
from collections import Counter

from tqdm import tqdm


class Progress:
    """A progress bar over every input's frames, and which engine each worker runs."""

    def __init__(self, total: int, done: int = 0, *, enabled: bool = True) -> None:
        self.workers: dict[str, str] = {}  # host:pid -> engine label
        self._t0 = time.perf_counter()
        self._run = 0  # frames localized by this run (not resumed ones)
        self._bar = tqdm(
            total=total,
            initial=done,
            desc="localize",
            unit="frame",
            dynamic_ncols=True,
            disable=None if enabled else True,
            mininterval=0.5,
        )

    def chunk_done(self, frames: int, worker: str, engine: str) -> None:
        if worker not in self.workers:
            self.workers[worker] = engine
            self.note(f"worker {worker}: engine {engine}")
        self._run += frames
        self._bar.update(frames)
        self._bar.set_postfix_str(self._postfix(), refresh=False)

    def note(self, message: str) -> None:
        """A line above the bar (the bar keeps its place)."""
        if not self._bar.disable:
            self._bar.write(message)

    @property
    def frames_per_s(self) -> float:
        dt = time.perf_counter() - self._t0
        return self._run / dt if dt > 0 else 0.0

    def _postfix(self) -> str:
        engines = Counter(self.workers.values())
        on = ", ".join(f"{n}x {label}" for label, n in sorted(engines.items()))
        return f"{self.frames_per_s:.1f} frames/s on {len(self.workers)} workers ({on})"

    def close(self) -> None:
        self._bar.close()
