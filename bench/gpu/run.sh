#!/usr/bin/env bash
# The GPU benchmarks in one command, for one H100/H200, no internet:
#   bash bench/gpu/run.sh                 # families_dpo.py: Qwen2.5-VL-7B, gemma-3-4b-it, Qwen3-VL-8B
#                                         # (ours vs TRL), then a real CUDA OOM and a SIGTERM
#   BENCH=idefics2 bash bench/gpu/run.sh  # idefics2_dpo.py: the seed's Idefics2-8b, ours vs TRL
# Results: $OUT/families_dpo.json or $OUT/idefics2_dpo.json, written as each part finishes.
# Python: the trainer's venv (`cd trainer && uv sync --frozen`), or PYTHON=python3 on the device
# machine, whose python3 has torch, transformers, peft and accelerate: with .whl/ carried (made
# here by bench/gpu/wheels.sh), TRL and `datasets` are installed from it first.
# Budget: one call of at most 10 minutes; the timeout leaves the JSON of whatever finished.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-trainer/.venv/bin/python}
if [ -d .whl ] && ! "$PY" -c 'import trl, datasets' 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True} PYTHONUNBUFFERED=1
case "${BENCH:-families}" in
  families) exec timeout "${BENCH_TIMEOUT:-570}" "$PY" bench/gpu/families_dpo.py "$@" ;;
  idefics2) exec timeout "${BENCH_TIMEOUT:-570}" "$PY" bench/gpu/idefics2_dpo.py "$@" ;;
  *) echo "BENCH must be families or idefics2" >&2; exit 2 ;;
esac
