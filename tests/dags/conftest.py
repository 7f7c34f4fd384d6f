"""Airflow for the DAG tests: a throw-away home and SQLite metadata DB per test session.

The environment is set at import time, before anything imports Airflow, so the tests never
touch the project's own ``.airflow`` home (see ``tests/airflow_home.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_home import use_throwaway_home

PROJECT = Path(__file__).resolve().parents[2]
_HOME = use_throwaway_home()


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
