#!/usr/bin/env bash
# `npm test`: setup (only what is missing), then the whole suite against real services:
# vitest (unit + integration on the Temporal dev server, MinIO and the Python trainer; the stack is
# started by the suite if it is not already up, and stopped afterwards only if it started it),
# then pytest for trainer/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npx vitest run "$@"
(cd trainer && .venv/bin/python -m pytest -q)
