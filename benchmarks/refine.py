"""Does ``voxloc localize --refine`` (Gauss-Newton steps of the photometry fit) help?

On Table 4-like frames (64 x 64, the model's own settings) it localizes each batch twice:
the frames as drawn and a twin, the same molecules with fresh noise, with the engine's
refinement off and on. Printed per set: the rms error per axis against the truth, its
robust sigma (MAD), and the correlation of one molecule's errors between the twins (the
bias a localizer repeats frame after frame, invisible to NeNA; docs/interop.md).

    python benchmarks/refine.py                 # 200 frames per set, ~1 min on the CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# run as a script, this folder comes first on sys.path and benchmarks/engines.py would
# shadow the `engines` package
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import numpy as np  # noqa: E402

from engines.evaluate.matching import match_localizations  # noqa: E402
from engines.inference import Engine, create_engine  # noqa: E402
from engines.simulator import Simulator  # noqa: E402

SETS = (("10/frame, no plane drift", 10, False), ("10/frame, plane drift", 10, True))
SETS += (("50/frame, no plane drift", 50, False), ("50/frame, plane drift", 50, True))


def errors(engine: Engine, frames: np.ndarray, truth: list[np.ndarray]) -> np.ndarray:
    """``(molecules, 3)`` error of each true molecule's match, nm (NaN: unmatched)."""
    out = []
    for b, loc in enumerate(engine.infer(frames)):
        m = match_localizations(loc.xyz_nm, truth[b])
        full = np.full((len(truth[b]), 3), np.nan)
        full[m.true_idx] = m.delta_nm
        out.append(full)
    return np.concatenate(out)


def run_set(engine: Engine, frames: int, molecules: int, drift: bool, seed: int) -> dict:
    sim = Simulator(engine.info.settings.model_copy(update={"margin_px": 0}), seed=seed)
    err: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for start in range(0, frames, 50):
        batch = sim.sample(min(50, frames - start), molecules, height=64, width=64, drift=drift)
        clean = sim.psf.render(batch.xyz_nm, batch.weights, batch.drift_nm, height=64, width=64)
        twin = sim.add_noise(clean + sim.settings.psf.b)
        truth = [batch.molecules(b).numpy() for b in range(batch.frames.shape[0])]
        for refine in (False, True):
            engine.refine = refine
            pair = [errors(engine, f.numpy(), truth) for f in (batch.frames, twin)]
            err[refine].append(np.stack(pair, axis=1))  # (molecules, 2, 3)
    out = {}
    for refine, parts in err.items():
        e = np.concatenate(parts)
        e = e[np.isfinite(e).all(axis=(1, 2))]
        first = e[:, 0]
        out[refine] = {
            "n": len(e),
            "rms": np.sqrt(np.mean(first**2, axis=0)),
            "mad": 1.4826 * np.median(np.abs(first), axis=0),
            "twin_corr": [np.corrcoef(e[:, 0, a], e[:, 1, a])[0, 1] for a in range(3)],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--frames", type=int, default=200, help="frames per set")
    p.add_argument("--seed", type=int, default=21)
    args = p.parse_args(argv)
    engine = create_engine(args.model, args.backend)
    print(f"model {engine.info.name}, {engine.label}, {args.frames} frames of 64x64 per set")
    head = f"{'set':26s} {'refine':6s} {'matched':>7s}  "
    print(head + "rms x/y/z nm       MAD sigma x/y/z    twin corr x/y/z")
    try:
        for name, molecules, drift in SETS:
            res = run_set(engine, args.frames, molecules, drift, args.seed)
            for refine, r in res.items():
                cells = [" ".join(f"{v:5.1f}" for v in r[k]) for k in ("rms", "mad")]
                corr = " ".join(f"{v:5.2f}" for v in r["twin_corr"])
                row = f"{name:26s} {'on' if refine else 'off':6s} {r['n']:7d}  "
                print(row + f"{cells[0]}  {cells[1]}  {corr}")
            ratio = res[True]["rms"] / res[False]["rms"]
            print(f"{'':26s} {'ratio':6s} {'':7s}  " + " ".join(f"{v:5.2f}" for v in ratio))
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
