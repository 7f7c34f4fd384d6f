# Environment for running the project's Airflow, Spark and CLI by hand:
#   source scripts/env.sh
# Everything stays inside the project folder; the API server listens on loopback only.
LANDUSE_PROJECT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LANDUSE_PROJECT
export PATH="$LANDUSE_PROJECT/.venv/bin:$LANDUSE_PROJECT/.tools/node_modules/.bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$LANDUSE_PROJECT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$LANDUSE_PROJECT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$LANDUSE_PROJECT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=4
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=landuse_airflow.sqlite.CONNECT_ARGS
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC=landuse_airflow.sqlite.CONNECT_ARGS
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
export AIRFLOW__LOGGING__LOGGING_LEVEL=INFO
export PYTHONPATH="$LANDUSE_PROJECT/plugins${PYTHONPATH:+:$PYTHONPATH}"
# Spark: the venv's Python on the workers, loopback only, one inference thread per worker.
export PYSPARK_PYTHON="$LANDUSE_PROJECT/.venv/bin/python"
export SPARK_LOCAL_IP=127.0.0.1
export OMP_NUM_THREADS=1
export TF_CPP_MIN_LOG_LEVEL=2
export NO_PROXY="${NO_PROXY:+$NO_PROXY,}127.0.0.1,localhost"
