#!/usr/bin/env bash
# Create or refresh the project's virtual environment from requirements.lock, install the
# Azurite storage emulator from npm, and initialise the project's Airflow home.
# Idempotent and quick when nothing changed (the venv is rebuilt only when the lock changes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
AZURITE_VERSION=3.35.0
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-64)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.lock-sha256 2>/dev/null)" != "$want" ]; then
  echo "setup: building .venv from requirements.lock (a cold install takes a few minutes)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip==26.3
  .venv/bin/python -m pip install --quiet -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -e .
  .venv/bin/python -m pip check
  echo "$want" > .venv/.lock-sha256
fi
if [ ! -x .tools/node_modules/.bin/azurite ]; then
  echo "setup: installing azurite@$AZURITE_VERSION from npm"
  npm install --silent --no-audit --no-fund --prefix .tools "azurite@$AZURITE_VERSION" >/dev/null
fi
# shellcheck source=scripts/env.sh
source scripts/env.sh
mkdir -p "$AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
# Write-ahead logging: the scheduler's long reads no longer hold off other components' writes
# (the mode is stored in the database file, so every later connection uses it).
python -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA journal_mode=WAL')" \
  "$AIRFLOW_HOME/airflow.db"
# Training tasks run in the gpu pool (one slot: one GPU, or one heavy CPU job here).
airflow pools set gpu 1 "training tasks; size it to the GPUs of the training workers" >/dev/null
# So that `airflow dags list` shows the project's DAGs before a DAG processor has run.
airflow dags reserialize >"$AIRFLOW_HOME/reserialize.log" 2>&1 || { cat "$AIRFLOW_HOME/reserialize.log"; exit 1; }
