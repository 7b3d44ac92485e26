# Sourced by main.sh and test.sh: find Python >= 3.12, create .venv if missing, install the package.
# Safe to source repeatedly; reinstalls only when pyproject.toml changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OCR_JAX_VENV:-$ROOT/.venv}"

find_python() {
  local c
  for c in "${OCR_JAX_PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  # pyenv installs that are not on PATH (the default python3 here is 3.11).
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  for c in $(ls -d "$root"/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -V -r) /usr/bin/python3.1[2-9] /usr/local/bin/python3.1[2-9]; do
    if [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python)" || { echo "error: ocr_jax needs Python >= 3.12; none found on PATH or under pyenv. Set OCR_JAX_PYTHON=/path/to/python3.12." >&2; exit 1; }
  echo "[setup] creating $VENV with $PY ($("$PY" --version))"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$VENV/.ocr_jax_installed"
HASH="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[setup] installing ocr_jax and its dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  echo "$HASH" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
