#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the whole test suite: ruff, mypy --strict, pytest.
# Usage: bash scripts/test.sh [extra pytest args]
#
# llama-cpp-python has no binary wheel on PyPI and compiles from source (~6 min on 2 cores).
# The wheel is built once into a cache outside the checkout, keyed by its version and the
# CPU's instruction-set flags (the build is tuned to the CPU), and reused by every later run:
#   PAPIN_WHEEL_CACHE (default ~/.cache/papin-ci/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PAPIN_VENV:-.venv}"
PY="${PYTHON:-python3}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

cpu_key=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-12 || echo generic)
WHEELS="${PAPIN_WHEEL_CACHE:-$HOME/.cache/papin-ci/wheels}/$(uname -m)-$cpu_key"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
  echo "== building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION once into $WHEELS (about 6 minutes on 2 cores)"
  "${PIP[@]}" wheel -q --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
fi
"${PIP[@]}" install -q --find-links "$WHEELS" -e ".[dev,embedded]"

echo "== ruff"
"$VENV/bin/ruff" check src tests bench
echo "== mypy --strict src"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" "$@"
