#!/usr/bin/env bash
# The GPU benchmark (bench/gpu/idefics2_dpo.py) in one command, for one H100/H200, no internet.
#   bash bench/gpu/run.sh [--grad-accum 32] [--skip-trl]      # results: $OUT/idefics2_dpo.json
# Needs the trainer's environment with its dev group (trl): `cd trainer && uv sync --frozen`
# (or PYTHON=/path/to/python with torch+CUDA, transformers, peft, accelerate, trl 1.16, datasets).
# Budget: ~10 minutes (model build + save ~1-2 min, two model loads, 2 x 20 steps); the timeout
# leaves the JSON of whatever finished.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-trainer/.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
exec timeout "${BENCH_TIMEOUT:-590}" "$PY" bench/gpu/idefics2_dpo.py "$@"
