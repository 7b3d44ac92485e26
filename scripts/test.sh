#!/usr/bin/env bash
# Runs the default test suite (fast, CPU, no network). Extra arguments go to pytest (e.g. -m slow, or test files).
# Without arguments (the README's command, and CI's) the linter and the formatter check run first, and the suite runs
# in OCR_JAX_TEST_WORKERS (default 2) pytest-xdist processes, one test file per process at a time: most tests' time is
# XLA compiling, which is single-threaded, so two processes on two cores roughly halve the wall-clock.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ $# -eq 0 ]; then
  ruff check . && ruff format --check . || { echo "ruff: fix the above (ruff check --fix . && ruff format .)" >&2; exit 1; }
  set -- -n "${OCR_JAX_TEST_WORKERS:-2}" --dist loadfile
fi
exec python -m pytest "$@"
