#!/usr/bin/env bash
# Training on a lent GPU (issue 12, item 5), inside a fixed time budget, two runs at once
# (the network is small: one run leaves the GPU mostly idle). What ran on 2026-12-04 (the
# paper run became training/default-paper, then the shipped v3; training/default-long,
# resumed here that day too, is retired):
#   paper:   the paper's schedule from scratch: 64x64 frames, 50 per step, 50 molecules,
#            lr 1e-3 constant, 40,000 steps (2 M frames)
#   cosine:  the same from scratch with our frame mix (5-90 molecules) and a cosine decay
# Each run checkpoints every 1,000 steps (a model dir is written with each checkpoint), so a
# run cut off by the budget still leaves its last model. Writes $OUT_DIR/train-<run>/ and
# $OUT_DIR/train-<run>.log.
#
#   scripts/gpu-train.sh OUT_DIR SECONDS
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?OUT_DIR}
BUDGET=${2:?SECONDS}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
train() {  # run name, then voxloc train arguments
  local name=$1
  shift
  timeout "$BUDGET" python -m clients.entrypoint train -o "$OUT_DIR/train-$name" \
    --device "${DEVICE:-cuda}" --checkpoint-every "${EVERY:-1000}" "$@" >"$OUT_DIR/train-$name.log" 2>&1 &
}
train paper --name default --steps 40000 --crop 64 --batch 50 --molecules 50 50 \
  --lr 1e-3 --seed 21
train cosine --name default --steps 40000 --crop 64 --batch 50 --lr 1e-3 --lr-final 1e-5 \
  --seed 22
wait
for f in "$OUT_DIR"/train-*.log; do
  echo "== $f"
  tr '\r' '\n' <"$f" | grep -v '^$' | tail -2
done
