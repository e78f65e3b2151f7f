"""The inference thread's own work per frame set, in one thread: the null engine's
submit and collect of a batch of 5 sets of 4x256x256 uint16, and its publication (a real
XPUB socket, no subscriber). Process CPU time, best of 5 x 2,000 batches: the Python per
set that the live pipeline pays whatever the engine does.

    python benchmarks/inference_loop.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from engines.inference import create_engine  # noqa: E402
from service.inference import LoadedModel, submit_batch  # noqa: E402
from service.publisher import Publisher  # noqa: E402
from service.stats import ServiceStats  # noqa: E402
from service.types import Batch, FrameSet  # noqa: E402

SETS, BATCHES, REPEATS = 5, 2000, 5


def main() -> None:
    engine = create_engine("default", "null")
    model = LoadedModel(engine, "default", "1", "null", Path("."))
    ctx = zmq.Context()
    stats = ServiceStats([f"cam{k}" for k in range(4)])
    pub = Publisher(ctx, endpoint="tcp://127.0.0.1:*", source="voxloc", sndhwm=1000, stats=stats)
    planes = [np.zeros((4, 256, 256), np.uint16) for _ in range(SETS)]

    def one(first: int) -> None:
        batch = Batch([FrameSet(first + i, planes[i], 0, 0) for i in range(SETS)])
        pub.publish(batch, submit_batch(model, batch, 0.5).collect(), model, 0.5)

    for b in range(200):  # warm-up
        one(b * SETS)
    per_set = []
    for _ in range(REPEATS):
        t0 = time.process_time()
        for b in range(BATCHES):
            one(b * SETS)
        per_set.append((time.process_time() - t0) / (BATCHES * SETS) * 1e6)
    pub.close()
    ctx.term()
    print(
        f"inference thread, null engine, batches of {SETS}: us per frame set "
        + " ".join(f"{v:.1f}" for v in per_set)
        + f"; best {min(per_set):.1f}"
    )


if __name__ == "__main__":
    main()
