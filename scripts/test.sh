#!/usr/bin/env bash
# `npm test`: setup (only what is missing), then the whole suite against real services:
# vitest (unit, integration, fault injection and replay, on the Temporal dev server, MinIO and the
# Python trainer; the stack is started by the suite if it is not already up, and stopped
# afterwards only if it started it) and pytest for trainer/.
#
# pytest runs beside vitest: much of the integration suite waits on timers, heartbeat timeouts
# and process start-up, time the trainer's own tests can use. Its output is printed once vitest
# is done, so each runner's summary stays readable; the exit status fails if either failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One OpenMP/BLAS thread per process: two vitest files and pytest run at once on 2 cores, and
# PyTorch's idle OpenMP threads spin, taking cycles from the other processes' trainers.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
pytest_log="$(mktemp)"
(cd trainer && exec .venv/bin/python -m pytest -q -p no:cacheprovider) >"$pytest_log" 2>&1 &
pytest_pid=$!
vitest_status=0
npx vitest run "$@" || vitest_status=$?
pytest_status=0
wait "$pytest_pid" || pytest_status=$?
echo
echo "pytest (trainer/):"
cat "$pytest_log"
rm -f "$pytest_log"
if [[ $vitest_status -ne 0 || $pytest_status -ne 0 ]]; then
  echo "test: vitest exited $vitest_status, pytest exited $pytest_status" >&2
  exit 1
fi
