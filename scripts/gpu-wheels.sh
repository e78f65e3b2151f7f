#!/usr/bin/env bash
# Wheels for the lent GPU machines (Python 3.12, PyTorch with CUDA, no network): the
# packages voxloc's service and tests need that their image lacks, at the versions this
# machine has. Downloads into .whl/ (ignored: add `/.whl/` to .git/info/exclude); the
# device call carries `.whl` and scripts/gpu-check.sh installs them into /tmp/site.
#
#   scripts/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(pyzmq fastapi starlette uvicorn pydantic pydantic_core pydantic-settings annotated-types
  typing-inspection python-dotenv typing_extensions opentelemetry-api)
pins=()
for p in "${PKGS[@]}"; do
  v=$(python -m pip show "$p" 2>/dev/null | awk '/^Version:/{print $2}')
  pins+=("$p${v:+==$v}")
done
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
