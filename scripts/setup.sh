#!/usr/bin/env bash
# Create or refresh the project's virtual environment from requirements.lock, install the
# Azurite storage emulator and the Land use view's map library (Leaflet) from npm, Debian's
# Chromium for the view's browser test, and initialise the project's Airflow home.
# Idempotent and quick when nothing changed (the venv is rebuilt only when the lock changes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
AZURITE_VERSION=3.35.0
LEAFLET_VERSION=1.9.4  # served by the Land use view (plugins/landuse_airflow/views); BSD-2
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
if [ "$(node -p "require('./.tools/node_modules/leaflet/package.json').version" 2>/dev/null)" \
    != "$LEAFLET_VERSION" ]; then
  echo "setup: installing leaflet@$LEAFLET_VERSION from npm (the Land use view's map library)"
  npm install --silent --no-audit --no-fund --prefix .tools "leaflet@$LEAFLET_VERSION" >/dev/null
fi
# From the distribution: headless Chromium for the Land use view's browser test (Playwright
# drives it; its own browser download is never used); PostgreSQL and Redis for the stack tests
# (tests/stack: the metadata database and Celery's broker, started by the tests on loopback;
# the packages' own services are not used).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: ${missing[*]} missing (apt-get install ${missing[*]}, as root); the view's browser test and the stack tests need them" >&2
  fi
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
airflow pools set county_refresh "${LANDUSE_REFRESH_POOL_SLOTS:-2}" "naip_refresh county-years at once" >/dev/null
# So that `airflow dags list` shows the project's DAGs before a DAG processor has run.
airflow dags reserialize >"$AIRFLOW_HOME/reserialize.log" 2>&1 || { cat "$AIRFLOW_HOME/reserialize.log"; exit 1; }
