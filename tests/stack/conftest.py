"""A real Airflow deployment on loopback: api-server, scheduler and dag-processor processes
(not ``dag.test()``), and a triggerer on request, with their own home and metadata DB, the
project's DAGs and plugins. Every port they open listens on 127.0.0.1: the API server, and
the scheduler's and triggerer's log servers (on free ports of their own, so that stacks of
concurrent test sessions do not collide; plugins/airflow_local_settings.py binds them).

Every process runs in its own process group and is killed with it at teardown; their logs
stay in the home folder for debugging.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = {"success", "failed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AirflowStack:
    """A running Airflow: its home, environment, API URL and component processes."""

    home: Path
    env: dict[str, str]
    api_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run ``airflow ARGS`` against this deployment; its stdout (raises on failure)."""
        done = subprocess.run([str(BIN / "airflow"), *args], env=self.env, timeout=timeout,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        """Start a component (``airflow ARGS``) in its own process group."""
        log = open(self.home / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [str(BIN / "airflow"), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop a component and everything it started."""
        proc = self.processes.pop(name)
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def up(self, timeout: float = 180,
           components: tuple[str, ...] = ("api-server", "scheduler", "dag-processor")) -> None:
        """Start the components (by default the api-server, scheduler and dag-processor; add
        ``"triggerer"`` for one); wait for the API to answer.

        SQLite has one writer at a time: prepare the DB with the CLI (backfills, variables)
        before calling this, not while the components write it.
        """
        for name in components:
            if name not in self.processes:
                self.start(name, name)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.api_url}/api/v2/version", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError((self.home / "api-server.log").read_text()[-3000:])
            time.sleep(2)

    def token(self) -> str:
        """A JWT for the REST API, from the generated admin password."""
        passwords = json.loads(
            (self.home / "simple_auth_manager_passwords.json.generated").read_text())
        r = requests.post(f"{self.api_url}/auth/token", timeout=30,
                          json={"username": "admin", "password": passwords["admin"]})
        r.raise_for_status()
        return str(r.json()["access_token"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs, as ``airflow dags list-runs`` reports them."""
        out = self.cli("dags", "list-runs", dag_id, "-o", "json")
        lines = [line for line in out.splitlines() if line.startswith(("[{", "[]"))]
        return list(json.loads(lines[-1])) if lines else []

    def task_states(self, dag_id: str, run_id: str, task_id: str) -> list[str]:
        """States of a task's instances (one per map index) in one run."""
        out = self.cli("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json")
        lines = [line for line in out.splitlines() if line.startswith(("[{", "[]"))]
        rows = json.loads(lines[-1]) if lines else []
        return [str(r["state"]) for r in rows if r["task_id"] == task_id]

    def wait_for_runs(self, dag_id: str, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``count`` runs of the DAG have finished; fail with the logs if not."""
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            runs = self.runs(dag_id)
            if len(runs) >= count and all(r["state"] in TERMINAL for r in runs):
                return runs
            time.sleep(3)
        tail = (self.home / "scheduler.log").read_text()[-4000:]
        raise AssertionError(f"{dag_id}: runs {runs} not finished after {timeout} s\n{tail}")


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """An Airflow home with a migrated SQLite metadata DB and the project's DAGs serialized;
    ``up()`` starts the components on loopback. The DAGs' outputs go to ``{home}/output``
    (``LANDUSE_STORAGE_ROOT``), their registry is ``{home}/counties.json``."""
    home = tmp_path_factory.mktemp("airflow-stack")
    port, worker_logs, trigger_logs = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "landuse_airflow.sqlite.CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "landuse_airflow.sqlite.CONNECT_ARGS",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        # Airflow 3.3.2 binds the log servers to every interface and has no option for it:
        # plugins/airflow_local_settings.py reads this one (as scripts/env.sh sets it).
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_logs),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_logs),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "PYTHONPATH": str(PROJECT / "plugins"),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "LANDUSE_STORAGE_ROOT": str(home / "output"),
        "LANDUSE_REGISTRY": str(home / "counties.json"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "NO_PROXY": "127.0.0.1,localhost",
    })
    stack = AirflowStack(home, env, f"http://127.0.0.1:{port}")
    stack.cli("db", "migrate", timeout=300)
    with sqlite3.connect(home / "airflow.db") as db:  # as scripts/setup.sh does
        db.execute("PRAGMA journal_mode=WAL")
    stack.cli("pools", "set", "gpu", "1", "training tasks")
    stack.cli("pools", "set", "county_refresh", "2", "naip_refresh county-years at once")
    stack.cli("dags", "reserialize", timeout=300)
    try:
        yield stack
    finally:
        for name in list(stack.processes):
            stack.stop(name)
