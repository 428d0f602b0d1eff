#!/usr/bin/env bash
# Set up a virtual environment (if needed) and run the whole test suite: ruff, mypy --strict, pytest.
# Usage: bash scripts/test.sh [extra pytest args]
# Environment: PAPIN_VENV (default .venv), PAPIN_WHEEL_CACHE (default ~/.cache/papin-ci/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${PAPIN_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"

echo "== ruff"
"$VENV/bin/ruff" check src tests bench
echo "== mypy --strict src"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" "$@"
