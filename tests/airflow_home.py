"""A throw-away Airflow home for the tests that import Airflow in-process (importable as
``airflow_home``: pytest puts ``tests/`` on the path for its conftest).

Importing Airflow reads its configuration (and writes ``airflow.cfg`` into ``AIRFLOW_HOME``),
so :func:`use_throwaway_home` must run before anything imports Airflow: the conftests of
``tests/dags`` and ``tests/landuse_airflow`` call it at import time. The first call creates
the home; later calls (another test folder in the same session) reuse it, so one session has
one home and one SQLite metadata DB, and the project's own ``.airflow`` is never touched.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
_home: Path | None = None


def airflow_settings(home: Path) -> dict[str, str]:
    """The environment that runs this project's Airflow from ``home`` with SQLite."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
    }


def use_throwaway_home() -> Path:
    """Point this process (and the processes it starts) at a fresh temporary Airflow home.

    Also puts ``plugins/`` on ``sys.path`` (``landuse_airflow`` imports as Airflow loads it).

    Raises:
        RuntimeError: Airflow was imported before any test home was set: it already read
            another configuration (possibly the project's own ``.airflow``).
    """
    global _home
    if _home is None:
        if "airflow" in sys.modules:
            raise RuntimeError(
                "Airflow was imported before the tests' throw-away home was set; import "
                "airflow_home and call use_throwaway_home() in the conftest first"
            )
        _home = Path(tempfile.mkdtemp(prefix="landuse-airflow-test-"))
        os.environ.update(airflow_settings(_home))
    if str(PROJECT / "plugins") not in sys.path:
        sys.path.insert(0, str(PROJECT / "plugins"))
    return _home
