"""Airflow for the DAG tests: a throw-away home and SQLite metadata DB per test session.

The environment is set at import time, before anything imports Airflow, so the tests never
touch the project's own ``.airflow`` home.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
_HOME = Path(tempfile.mkdtemp(prefix="landuse-airflow-test-"))
os.environ.update(
    AIRFLOW_HOME=str(_HOME),
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{_HOME}/airflow.db",
    AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT / "dags"),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT / "plugins"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__UNIT_TEST_MODE="False",
    MLFLOW_TRACKING_URI=f"sqlite:///{_HOME}/mlflow.db",
)
sys.path.insert(0, str(PROJECT / "plugins"))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata DB (``dag.test()`` needs one)."""
    for command in (["db", "migrate"], ["pools", "set", "gpu", "1", "training tasks"]):
        subprocess.run(
            [sys.executable, "-m", "airflow", *command],
            check=True, capture_output=True, env=os.environ.copy(),
        )
    return _HOME


@pytest.fixture(scope="session")
def dagbag():
    """Every DAG of the project, parsed as the DAG processor would."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT / "dags"))
