#!/usr/bin/env bash
# Proves the trainer on the GPU machine's preinstalled package versions (which the lock does not pin),
# on CPU: builds a side virtualenv outside the repo with those versions, then runs the trainer tests
# (model families, TRL parity, resume, OOM backoff, SFT, ...; all but tracking) and bench/gpu's
# --smoke runs with it.
#   bash trainer/scripts/device_compat.sh            # venv at /tmp/compat-venv (COMPAT_VENV overrides)
#   TESTS="tests/test_sft.py" bash trainer/scripts/device_compat.sh
# torch 2.11 from PyPI brings its CUDA libraries (about 5 GB); download.pytorch.org (the CPU-only wheels) did not resolve from the dev machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-$HOME/.cache/dpo-vlm/uv-0.13.8/bin/uv}
export UV_CACHE_DIR=${UV_CACHE_DIR:-$HOME/.cache/dpo-vlm/uv-cache}
VENV=${COMPAT_VENV:-/tmp/compat-venv}
PY312=${PY312:-$(command -v python3.12)}
locked() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' trainer/uv.lock; }
# The GPU machine's python3 (fixed by the machine image), then the wheels bench/gpu/wheels.sh carries
# (the lock's trl and datasets), then the test tools at the lock's versions. peft is not preinstalled
# there in a known version: its newest release that resolves with transformers 5.17.
DEVICE=(torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 accelerate==1.15.0 tokenizers==0.23.2
  safetensors==0.8.0 huggingface_hub==1.33.0 onnx==1.23.1 onnxruntime==1.30.0 onnxscript==0.7.2 numpy==2.5.2)
CARRIED=()
for pkg in trl datasets dill multiprocess peft pyarrow pillow jsonschema pytest duckdb; do CARRIED+=("$pkg==$(locked "$pkg")"); done
[ -x "$VENV/bin/python" ] || "$UV" venv -q -p "$PY312" "$VENV"
"$UV" pip install -q -p "$VENV/bin/python" "${DEVICE[@]}" "${CARRIED[@]}"
"$VENV/bin/python" -c 'import importlib.metadata as m; print({p: m.version(p) for p in ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "onnx", "onnxruntime", "numpy"]})'
export PYTHONPATH=$PWD/trainer OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Every test file but the tracking ones (TensorBoard, MLflow and W&B are not on the GPU machine).
TESTS=${TESTS:-"tests/test_auto_batch.py tests/test_bad_inputs.py tests/test_config.py tests/test_config_schema.py tests/test_distributed.py tests/test_estimate.py tests/test_gemma3.py tests/test_init_adapter.py tests/test_llava_next.py tests/test_losses.py tests/test_multi_image.py tests/test_qwen_vl.py tests/test_reference.py tests/test_schema.py tests/test_sft.py tests/test_sft_parity.py tests/test_tiny_model.py tests/test_train.py tests/test_train_losses.py tests/test_trl_parity.py tests/test_validate.py tests/test_watchdog_control.py"}
(cd trainer && "$VENV/bin/python" -m pytest -q -p no:cacheprovider $TESTS)
if [ -z "${SKIP_SMOKE:-}" ]; then
  "$VENV/bin/python" bench/gpu/families_dpo.py --smoke
  "$VENV/bin/python" bench/gpu/idefics2_dpo.py --smoke
fi
