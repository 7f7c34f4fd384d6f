#!/usr/bin/env bash
# The test command: set up, then lint (ruff with Airflow rules), type-check include/, run pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow  or  scripts/test.sh tests/landuse
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
echo "== ruff"; ruff check .
echo "== mypy include/"; mypy
echo "== pytest"; pytest "$@"
