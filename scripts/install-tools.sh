#!/usr/bin/env bash
# Builds the Temporal CLI and the MinIO server with `go install` into the per-user cache
# (~/.cache/dpo-vlm/tools/<name>-<version>/bin), unless they are already on PATH or cached.
# The first build compiles both from source and takes many minutes (10-20 on 2 cores).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/versions.sh"

install_go_tool() { # name module version
  local name="$1" module="$2" version="$3"
  local dir="$DPO_CACHE_DIR/tools/$name-$version"
  if [[ -x "$dir/bin/$name" ]]; then return 0; fi
  if [[ -z "${DPO_IGNORE_PATH_TOOLS:-}" ]] && command -v "$name" >/dev/null 2>&1; then
    echo "setup: using $name from PATH ($(command -v "$name"))"; return 0
  fi
  command -v go >/dev/null || { echo "setup: Go is needed to build $name ($module@$version)" >&2; exit 1; }
  echo "setup: building $name $version with go install (first time only; this takes many minutes)..."
  mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp/bin" CGO_ENABLED=0 go install "$module@$version"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "setup: $name ready in $dir/bin"
}

install_go_tool temporal github.com/temporalio/cli/cmd/temporal "$TEMPORAL_CLI_VERSION" &
p1=$!
install_go_tool minio github.com/minio/minio "$MINIO_VERSION" &
p2=$!
wait $p1 && wait $p2
