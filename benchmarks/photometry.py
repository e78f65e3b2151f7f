"""Cost of the per-localization photometry and precision in the engine's live path.

The live service's input (``benchmarks/service.py``): 64x64x4 uint16 frame sets with an
affine registration, gain and baseline on every camera, 5-40 molecules per set. For each
CPU backend and batch size it times, round-robin and as medians, the engine's whole
``infer_raw`` call (network, decode, photometry and calibrated precision) and the
photometry alone on the same localizations (``PhotometryFit.measure_raw``, plus the
calibration's neighbour search), and prints the photometry's share of the call, its cost
per frame set and per localization; and the call with the refinement on (the service's
``refine`` setting, ``voxloc localize --refine``) against the plain call.

    python benchmarks/photometry.py                 # torch and onnxruntime, batch 8
    python benchmarks/photometry.py --batches 1 8 32 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engines.inference import create_engine  # noqa: E402
from engines.inference.registration import PlaneRegistration  # noqa: E402
from engines.precision import nearest_neighbour_nm  # noqa: E402
from engines.simulator import Simulator  # noqa: E402

GAINS = (2.0, 2.1, 1.9, 2.05)
BASELINES = (100.0, 98.0, 102.0, 101.0)
AFFINES = [
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    [[1.0, 0.002, 0.4], [-0.002, 1.0, -0.3]],
    [[0.999, 0.0, -0.5], [0.0, 1.001, 0.2]],
    [[1.0, -0.001, 0.1], [0.001, 1.0, 0.6]],
]


def median_s(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    ap.add_argument("--batches", type=int, nargs="+", default=[8])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of the engines")
    ap.add_argument("--device", default=None, help="the engines' device (e.g. cuda for torch)")
    args = ap.parse_args(argv)

    opts: dict = {} if args.threads is None else {"threads": args.threads}
    if args.device is not None:
        opts["device"] = args.device
    engines = {b: create_engine(args.model, b, **opts) for b in args.backends}
    info = next(iter(engines.values())).info
    sim = Simulator(info.settings, seed=3)
    reg = PlaneRegistration.create(
        affine_px=np.array(AFFINES), gain_adu=GAINS, baseline_adu=BASELINES
    )
    gains = np.array(GAINS, np.float32)[:, None, None]
    base = np.array(BASELINES, np.float32)[:, None, None]
    calibrated = next(iter(engines.values())).calibration is not None
    print(
        f"model {info.name}, 64x64x4 uint16 frame sets, affine registration, 5-40 molecules "
        f"per set; precision calibration {'on' if calibrated else 'off (no CRLB computed)'}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'backend':>12s} {'batch':>5s} {'locs/set':>8s} {'call ms/set':>11s} "
        f"{'photometry ms/set':>17s} {'us/loc':>7s} {'share':>6s} "
        f"{'refined call ms/set':>19s} {'refined/plain':>13s}"
    )
    for batch in args.batches:
        sets = sim.sample(batch, (5, 40)).frames.numpy()
        raw = np.clip(np.round(sets * gains + base), 0, 65535).astype(np.uint16)
        for name, eng in engines.items():
            locs = eng.infer_raw(raw, reg)
            n = sum(map(len, locs))
            idx = torch.cat([torch.full((len(loc),), b) for b, loc in enumerate(locs)])
            xyz = torch.from_numpy(np.concatenate([loc.xyz_nm for loc in locs]))
            raw_t = torch.from_numpy(raw.astype(np.float32)).to(eng.device)
            idx, xyz = idx.to(eng.device), xyz.to(eng.device)
            fit = eng.photometry

            def photometry() -> None:
                with torch.inference_mode():
                    fit.measure_raw(raw_t, reg, idx, xyz, crlb=calibrated)  # noqa: B023
                    if calibrated:
                        nearest_neighbour_nm(idx, xyz[:, :2])  # noqa: B023

            call = median_s(lambda: eng.infer_raw(raw, reg), args.reps)  # noqa: B023
            phot = median_s(photometry, args.reps)
            refined = median_s(
                lambda: eng.submit_raw(raw, reg, refine=True).result(),  # noqa: B023
                args.reps,
            )
            print(
                f"{name:>12s} {batch:>5d} {n / batch:>8.1f} {1e3 * call / batch:>11.2f} "
                f"{1e3 * phot / batch:>17.3f} {1e6 * phot / max(n, 1):>7.1f} "
                f"{100 * phot / call:>5.1f}% {1e3 * refined / batch:>19.2f} "
                f"{refined / call:>12.2f}x"
            )
    for eng in engines.values():
        eng.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
