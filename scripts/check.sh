#!/usr/bin/env bash
# The whole test suite: lint, format, type-check, unit + doctests (incl. slow ones).
# Run inside the project's virtual environment (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
export MVXRAY_CACHE="${MVXRAY_CACHE:-$PWD/.cache/mvxray}"
python -m ruff check src tests examples
python -m ruff format --check src tests examples
python -m mypy
# pytest exits 5 when it collects no test: with `set -e` that fails the run, as it should.
python -m pytest -n "${MVXRAY_TEST_WORKERS:-2}" -q --durations=15 "$@"
