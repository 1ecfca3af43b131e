# Sourced by scripts/demo.sh and scripts/test.sh: create .venv once, install the CPU torch wheel first
# (so pip never pulls CUDA packages), then the package itself. Re-runs are cheap.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pip's own exit status is kept; only the noise of unreachable extra index folders is dropped from stderr
pipq() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if [ ! -f "$stamp" ]; then
  echo "setting up $VENV (first run only) ..." >&2
  pipq install -q --upgrade pip
  pipq install -q "torch==2.13.0"
  pipq install -q -e "$ROOT[test]"
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
