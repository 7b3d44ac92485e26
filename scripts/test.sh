#!/usr/bin/env bash
# Runs the default test suite (fast, CPU, no network). Extra arguments go to pytest (e.g. -m slow, or test files).
# Without arguments (the README's command, and CI's) the linter and the formatter check run first.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ $# -eq 0 ]; then
  ruff check . && ruff format --check . || { echo "ruff: fix the above (ruff check --fix . && ruff format .)" >&2; exit 1; }
fi
exec python -m pytest "$@"
