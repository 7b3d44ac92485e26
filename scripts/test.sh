#!/usr/bin/env bash
# Runs the default test suite (fast, CPU, no network). Extra arguments go to pytest (e.g. -m slow).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m pytest "$@"
