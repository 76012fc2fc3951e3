#!/usr/bin/env bash
# The wheels the GPU machine's python3 lacks for bench/gpu (TRL and `datasets`, at trainer/uv.lock's
# versions, and the two packages of `datasets` it does not have), downloaded here into .whl/ for
# Python 3.12 on x86-64. The device run carries .whl and installs it first (bench/gpu/run.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
locked() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' trainer/uv.lock; }
mkdir -p .whl
for pkg in trl datasets dill multiprocess; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg==$(locked "$pkg")"
done
ls -la .whl
