# Environment for running the project's Airflow, Spark and CLI by hand:
#   source scripts/env.sh
# Everything stays inside the project folder; every port Airflow opens listens on loopback only.
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
# The log servers of the scheduler (LocalExecutor, port 8793) and the triggerer (8794):
# Airflow 3.3.2 binds them to every interface (0.0.0.0 and ::) and has no option for it, so
# plugins/airflow_local_settings.py reads this one and binds them here. The API server reads
# finished tasks' logs from the log folder and fetches a running task's from
# http://<task hostname>:8793, which works as long as this machine's FQDN resolves to loopback.
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_HOST=127.0.0.1
# The scheduler's health-check server, when [scheduler] enable_health_check is turned on.
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST=127.0.0.1
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
export AIRFLOW__LOGGING__LOGGING_LEVEL=INFO
export PYTHONPATH="$LANDUSE_PROJECT/plugins${PYTHONPATH:+:$PYTHONPATH}"
# Spark: the venv's Python on the workers, loopback only, one inference thread per worker.
export PYSPARK_PYTHON="$LANDUSE_PROJECT/.venv/bin/python"
export SPARK_LOCAL_IP=127.0.0.1
export OMP_NUM_THREADS=1
export TF_CPP_MIN_LOG_LEVEL=2
export NO_PROXY="${NO_PROXY:+$NO_PROXY,}127.0.0.1,localhost"
