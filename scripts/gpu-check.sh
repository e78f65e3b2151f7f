#!/usr/bin/env bash
# GPU check (issue 13): on a machine with an NVIDIA GPU and PyTorch with CUDA (no TensorRT,
# no network needed), in under 8 minutes:
#   1. the GPU tests (torch CUDA engine, CUDA graphs, device registration, parity),
#   2. the engine benchmark on CUDA: torch fp32 / fp16 / bf16, CUDA graphs, at 64/256/512,
#   3. the live service end to end at 4x256x256 with 4 producer processes (delivered fps,
#      p50/p99 latency at 50 % of the ceiling, service / engine ratio), tcp and ipc,
#   4. the photometry's and the refinement's cost per 64x64 set on CUDA (the live
#      service's refine setting; benchmarks/photometry.py),
# then writes ONE JSON: $OUT/gpu-check.json (OUT: first argument, $OUT, or ./gpu-check).
# Without CUDA it still runs what does not need it (the tests skip with their reason, the
# live check runs with the null engine as a smoke test) and says so in the JSON.
#
#   scripts/gpu-check.sh [OUT]
# On a lent machine (device tool): scripts/gpu-wheels.sh here first, carry .whl, and fetch
# one tarball of OUT (the tool returns at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VOXLOC_CACHE="${VOXLOC_CACHE:-$OUT_DIR/cache}"
START=$(date +%s)
# the lent machines lack the service's packages: carry .whl (scripts/gpu-wheels.sh)
if compgen -G ".whl/*.whl" >/dev/null && ! python -c "import fastapi, zmq" 2>/dev/null; then
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

CUDA=$(python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
echo "gpu-check: CUDA available: $CUDA; results in $OUT_DIR"

step() {  # name, timeout seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"timeout_s\": $limit}" \
    >"$OUT_DIR/$name.rc.json"
  echo "gpu-check: $name rc=$rc ($(( $(date +%s) - t0 )) s)"
}

step tests 150 python -m pytest -q -rs -p no:cacheprovider -c scripts/gpu-pytest.ini --rootdir . \
  tests/inference/test_inf_torch_cuda.py tests/inference/test_inf_parity.py \
  tests/service/test_device_registration.py tests/inference/test_inf_null.py \
  tests/engines/test_plane_shift.py \
  --junitxml "$OUT_DIR/tests.xml"

if [ "$CUDA" = 1 ]; then
  step engines 210 python benchmarks/engines.py --backends torch --device cuda \
    --sizes 64 256 512 --batches 8 32 --min-time 1.5 --max-calls 50 \
    --long-frames 2000 --long-size 256 --long-batch 32 --json "$OUT_DIR/engines-cuda.json"
  step service 150 python benchmarks/service.py --engine auto --sizes 256 \
    --transports tcp,ipc --seconds 4 --rss-sets 2000 --json "$OUT_DIR/service-256.json"
  step refine 60 python benchmarks/photometry.py --backends torch --device cuda \
    --batches 8 32 --reps 9
else
  echo "gpu-check: no CUDA GPU: engine benchmark skipped; live check with the null engine"
  step service 150 python benchmarks/service.py --engine null --sizes 256 \
    --transports ipc --seconds 2 --rss-sets 0 --json "$OUT_DIR/service-256.json"
fi

python - "$OUT_DIR" "$CUDA" "$START" <<'PY'
import json, sys, time, platform
from pathlib import Path

out, cuda, start = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
def tail(name, n=40):
    p = out / name
    return p.read_text().splitlines()[-n:] if p.is_file() else None

import torch
env = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "cuda_available": cuda,
}
try:
    import onnxruntime as ort
    env["onnxruntime"] = ort.__version__
    env["onnxruntime_providers"] = ort.get_available_providers()
except ImportError:
    env["onnxruntime"] = None
engines = load("engines-cuda.json")
rows = [
    {k: r.get(k) for k in ("backend", "device", "size", "batch", "frames_per_s", "ratio_to_paper")}
    for r in (engines or {}).get("rows", [])
]
report = {
    "env": env,
    "seconds": int(time.time()) - start,
    "tests": {**(load("tests.rc.json") or {}), "summary": tail("tests.log", 15)},
    "engines_cuda": {
        **(load("engines.rc.json") or {"skipped": "no CUDA GPU"}),
        "rows": rows,
        "long_run": (engines or {}).get("long_run"),
    },
    "service_4x256x256": {
        **(load("service.rc.json") or {}),
        "engine": "auto" if cuda else "null (no CUDA: smoke test)",
        "results": (load("service-256.json") or {}).get("results"),
        "log": tail("service.log", 12),
    },
    "refine_cuda": {**(load("refine.rc.json") or {"skipped": "no CUDA GPU"}),
                    "table": tail("refine.log", 8)},
}
(out / "gpu-check.json").write_text(json.dumps(report, indent=2))
print(f"gpu-check: wrote {out / 'gpu-check.json'} ({report['seconds']} s)")
PY
