"""A real Airflow deployment on loopback, as docker-compose.yaml runs it: api-server,
scheduler and dag-processor processes (not ``dag.test()``), a triggerer and two Celery
workers on request, with their own home and metadata database, the project's DAGs and plugins.

The metadata database is PostgreSQL (a server this test session starts, one database per
stack) and the executors are ``LocalExecutor,CeleryExecutor`` with a Redis broker (also
started here): tasks run in the scheduler unless they name Celery, as the training candidates
do with ``LANDUSE_GPU_EXECUTOR``; the workers serve the ``default`` and ``gpu`` queues.
Every port opened listens on 127.0.0.1 (free ports, so concurrent test sessions do not
collide; plugins/airflow_local_settings.py binds the log servers), and every password is
generated per session.

Every process runs in its own process group and is killed with it at teardown; their logs
stay in the home folder for debugging.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = {"success", "failed"}
# Celery workers: component name -> the queue it serves. Each records its own name as the
# task instances' hostname (tests/stack/worker_host.py), as workers on separate machines do.
WORKERS = {"worker-default": "default", "worker-gpu": "gpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process and its group; SIGKILL when it does not end within 30 s."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)


@dataclass
class Postgres:
    """A PostgreSQL server on loopback with a generated superuser password."""

    port: int
    password: str
    user: str = "landuse"
    _databases: itertools.count[int] = field(default_factory=itertools.count)

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its name."""
        import psycopg2

        name = f"airflow_{next(self._databases)}"
        with closing(psycopg2.connect(self.url("postgres", "postgresql"))) as db:
            db.autocommit = True  # CREATE DATABASE runs outside a transaction
            with db.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
        return name


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL (scripts/setup.sh installs it) in a data folder of its own.

    PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user that
    Debian's package creates. Durability settings are off: a test database is thrown away."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda p: int(p.split("/")[4]))
    if not initdb:
        pytest.fail("PostgreSQL is not installed (/usr/lib/postgresql/*/bin): run scripts/setup.sh")
    bindir = Path(initdb[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="landuse-postgres-"))
    server = Postgres(_free_port(), secrets.token_urlsafe(16))
    (folder / "password").write_text(server.password)
    if as_user:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "password", "postgres")
    log = folder / "postgres.log"
    done = subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", server.user,
         f"--pwfile={folder / 'password'}", "--auth=scram-sha-256", "-E", "UTF8",
         "--no-locale"], capture_output=True, text=True, timeout=120)
    if done.returncode:
        pytest.fail(f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    (folder / "password").unlink()
    proc = _start([*as_user, str(bindir / "postgres"), "-D", str(folder / "data"),
                   "-h", "127.0.0.1", "-p", str(server.port), "-k", str(folder / "data"),
                   "-c", "max_connections=300", "-c", "fsync=off",
                   "-c", "synchronous_commit=off", "-c", "full_page_writes=off"], log)
    try:
        _wait_for_port(server.port, proc, log, "PostgreSQL")
        yield server
    finally:
        _stop(proc, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Redis:
    """A Redis server on loopback with a generated password (Celery's broker)."""

    port: int
    password: str
    _databases: itertools.count[int] = field(default_factory=itertools.count)

    def url(self) -> str:
        """A broker URL on a database no earlier stack used (16 per server)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{next(self._databases) % 16}"


@pytest.fixture(scope="session")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """Debian's redis-server (scripts/setup.sh installs it), nothing saved to disk."""
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail("redis-server is not installed: run scripts/setup.sh")
    folder = tmp_path_factory.mktemp("redis")
    server = Redis(_free_port(), secrets.token_urlsafe(16))
    config = folder / "redis.conf"  # the password in a file, not on the command line
    config.write_text(f"bind 127.0.0.1\nport {server.port}\nrequirepass {server.password}\n"
                      f'save ""\nappendonly no\ndir {folder}\n')
    log = folder / "redis.log"
    proc = _start([binary, str(config)], log)
    try:
        _wait_for_port(server.port, proc, log, "Redis")
        yield server
    finally:
        _stop(proc)


@dataclass
class AirflowStack:
    """A running Airflow: its home, environment, API URL and component processes."""

    home: Path
    env: dict[str, str]
    api_url: str
    database_url: str
    worker_log_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run ``airflow ARGS`` against this deployment; its stdout (raises on failure)."""
        done = subprocess.run([str(BIN / "airflow"), *args], env=self.env, timeout=timeout,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Start a component (``airflow ARGS``) in its own process group."""
        with open(self.home / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(BIN / "airflow"), *args], env={**self.env, **(env or {})}, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop a component and everything it started."""
        _stop(self.processes.pop(name), sig)

    def start_worker(self, name: str) -> None:
        """Start the Celery worker ``name`` (one of ``WORKERS``): one task at a time, its log
        server on a port of its own, its name recorded as the hostname of what it runs."""
        self.start(name, "celery", "worker", "--queues", WORKERS[name], "--concurrency", "1",
                   "--celery-hostname", f"{name}@%h", env={
                       "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_ports[name]),
                       "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_host.name",
                       "LANDUSE_TEST_WORKER_HOST": name,
                       "PYTHONPATH": f"{self.env['PYTHONPATH']}{os.pathsep}{Path(__file__).parent}",
                   })

    def up(self, timeout: float = 180,
           components: tuple[str, ...] = ("api-server", "scheduler", "dag-processor")) -> None:
        """Start the components (by default the api-server, scheduler and dag-processor; add
        ``"triggerer"`` or the ``WORKERS``); wait for the API to answer."""
        for name in components:
            if name in self.processes:
                continue
            if name in WORKERS:
                self.start_worker(name)
            else:
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

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """The rows of one read-only query on the metadata database."""
        import psycopg2

        with closing(psycopg2.connect(self.database_url.replace("+psycopg2", ""))) as db:
            db.set_session(readonly=True, autocommit=True)
            with db.cursor() as cursor:
                cursor.execute(sql, args or None)
                return list(cursor.fetchall())

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
def airflow_stack(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres,
                  redis: Redis) -> Iterator[AirflowStack]:
    """An Airflow home with a migrated metadata database of its own (PostgreSQL) and the
    project's DAGs serialized; ``up()`` starts the components on loopback. The DAGs' outputs
    go to ``{home}/output`` (``LANDUSE_STORAGE_ROOT``), their registry is
    ``{home}/counties.json``."""
    home = tmp_path_factory.mktemp("airflow-stack")
    port, worker_logs, trigger_logs = _free_port(), _free_port(), _free_port()
    database = postgres.url(postgres.create_database())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # As docker-compose.yaml: tasks run in the scheduler unless they name Celery. Celery's
        # results go to the metadata database (the provider's default).
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": redis.url(),
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
        # As docker-compose.yaml's gpu profile: training candidates go to Celery's gpu queue
        # (only the stacks that train start the workers).
        "LANDUSE_GPU_EXECUTOR": "CeleryExecutor",
        "LANDUSE_GPU_QUEUE": "gpu",
        "LANDUSE_STORAGE_ROOT": str(home / "output"),
        "LANDUSE_REGISTRY": str(home / "counties.json"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "NO_PROXY": "127.0.0.1,localhost",
    })
    stack = AirflowStack(home, env, f"http://127.0.0.1:{port}", database,
                         {name: _free_port() for name in WORKERS})
    stack.cli("db", "migrate", timeout=300)
    stack.cli("pools", "set", "gpu", "1", "training tasks")
    stack.cli("pools", "set", "county_refresh", "2", "naip_refresh county-years at once")
    stack.cli("dags", "reserialize", timeout=300)
    try:
        yield stack
    finally:
        for name in list(stack.processes):
            stack.stop(name)
