#!/usr/bin/env bash
# Installs voxloc into the current Python environment.
#   bash scripts/install.sh          # the package with its engine (service, CLI, models)
#   bash scripts/install.sh --test   # + test tools and Debian's chromium for browser tests
# An acquisition PC that only pushes frames needs neither: `pip install .` (no torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned here, not in pyproject: this release is a local CPU wheel on our dev/CI
# machines (fast, no multi-GB download) and a CUDA build from PyPI on a user's GPU box.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
if [ "${1:-}" = "--test" ]; then
  "$PY" -m pip install -q -e ".[engine,test]"
  # Picasso for tests/interop without its GUI dependencies (the test extra has the rest;
  # pyproject.toml `interop`)
  "$PY" -m pip install -q --no-deps "picassosr==0.11.3"
  # Debian's chromium for the browser tests; GL/xkb libraries for napari's Qt (offscreen)
  debs="chromium libgl1 libegl1 libxkbcommon0 libdbus-1-3 libfontconfig1"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! dpkg -s $debs >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq $debs >/dev/null) \
      || echo "install.sh: $debs not all installed; browser/napari tests may skip" >&2
  fi
else
  "$PY" -m pip install -q -e ".[engine]"
fi
