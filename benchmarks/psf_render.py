"""PSF rendering benchmark: Gaussian vs spline vs vectorial, against one training step.

A training batch (50 crops of 32x32x4, 5-90 molecules per 64x64 area plus the margin) and
a Table 4 test batch (50 frames of 64x64x4 at 50 molecules) are drawn by the simulator with
each PSF; one optimizer step of the default network on the training batch is timed in the
same loop, interleaved, so a load change on the machine hits all alike. "render" is the
PSF's ``render`` alone on the molecules of one drawn training / test batch (no noise, no
targets), "/ gauss" its ratio to the Gaussian's on the training batch. Medians of
``--repeats`` calls, ms. The spline is any ``.npz`` from ``voxloc calibrate psf``.

    python benchmarks/psf_render.py docs/own-microscope/vectorial/model/psf_spline.npz
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# run as a script, this folder comes first on sys.path and benchmarks/engines.py would
# shadow the `engines` package
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import torch  # noqa: E402

from engines.config import SimSettings  # noqa: E402
from engines.loss import voxel_loss  # noqa: E402
from engines.modeldir import load_model  # noqa: E402
from engines.psf_model import spline_ref  # noqa: E402
from engines.simulator import Simulator  # noqa: E402


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spline", help="spline PSF file (.npz)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vectorial", action="store_true", help="also the vectorial microscope")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = SimSettings()
    psf = base.psf.model_copy(update={"spline": spline_ref(args.spline)})
    sims = {"gaussian": Simulator(base), "spline": Simulator(base.model_copy(update={"psf": psf}))}
    if args.vectorial:
        from engines.vectorial import VectorialPSF

        sims["vectorial"] = Simulator(base, psf=VectorialPSF(base))
    net, _ = load_model("default")
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-6)
    batch = sims["gaussian"].sample(50, (3, 35), height=32, width=32)

    def step() -> None:
        frames = batch.frames.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", torch.bfloat16):
            logits = net.logits(frames)
        loss, _ = voxel_loss(logits.float(), batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()

    test = sims["gaussian"].sample(50, 50, height=64, width=64)

    def render(psf, b, side: int) -> None:  # the PSF alone, on a drawn batch's molecules
        psf.render(b.xyz_nm, b.weights, b.drift_nm, height=side, width=side)

    head = ("train batch 50x32x32x4", "test batch 50x64x64x4", "render train / test", "/ gauss")
    print(f"{'PSF':<10s} {head[0]:>24s} {head[1]:>22s} {head[2]:>22s} {head[3]:>8s}")
    step_ms = _time(step, args.repeats)
    render_ms: dict[str, tuple[float, float]] = {}
    for name, sim in sims.items():
        train_ms = _time(lambda s=sim: s.sample(50, (3, 35), height=32, width=32), args.repeats)
        test_ms = _time(lambda s=sim: s.sample(50, 50, height=64, width=64), args.repeats)
        render_ms[name] = (
            _time(lambda s=sim: render(s.psf, batch, 32), args.repeats),
            _time(lambda s=sim: render(s.psf, test, 64), args.repeats),
        )
        r_train, r_test = render_ms[name]
        ratio = r_train / render_ms["gaussian"][0]
        print(
            f"{name:<10s} {train_ms:>21.0f} ms {test_ms:>19.0f} ms "
            f"{r_train:>8.1f} / {r_test:>6.1f} ms {ratio:>7.1f}x"
        )
    print(f"{'(training step, bf16)':<24s} {step_ms:>7.0f} ms")
    for name in sims:
        if name != "gaussian":
            r_train, r_test = render_ms[name]
            print(
                f"{name} render / training step: {r_train / step_ms:.3f} (training batch), "
                f"{r_test / step_ms:.3f} (test batch)"
            )


if __name__ == "__main__":
    main()
