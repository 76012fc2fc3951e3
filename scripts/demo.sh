#!/usr/bin/env bash
# `npm run demo`: setup (only what is missing), then the demo pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx tsx scripts/demo.ts "$@"
