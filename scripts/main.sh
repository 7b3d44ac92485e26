#!/usr/bin/env bash
# The main job: obtain data, train, evaluate, write results and pictures under ${WORKDIR:-runs/main}.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m experiments.main_job "$@"
