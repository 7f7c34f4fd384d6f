"""The documented deployment, started for real: ``scripts/stack.sh up`` (the engine, the
images, offline stand-ins where no registry is reachable, ``.env``, ``docker-compose up`` with
two Spark workers, every service healthy), then as an operator would, through the REST API
with a generated user's password: naip_dataset -> landuse_training -> landuse_scoring 2010 on
the compose Spark cluster (a spark-worker container killed mid-scoring) and 2016 ->
change_detection on the bundled sample; the Land use view on 127.0.0.1 shows the change
report; ``down`` then ``up`` keeps the champion, the reports and the run history; ``down -v``
removes them. Every published port is on 127.0.0.1.

Marked ``compose`` (left out of the default run: about half an hour on 2 cores, beside a
Docker engine): ``scripts/test.sh -m compose tests/stack/test_compose.py``. It uses the
checkout's ``.env`` (``scripts/stack.sh`` writes one with generated secrets when missing)
under its own project name, and removes its containers and volumes at the end.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

PROJECT = Path(__file__).resolve().parents[2]
API = "http://127.0.0.1:8080"
NAME = "landuse-check"
ENV = {**os.environ, "COMPOSE_PROJECT_NAME": NAME}
COUNTIES = ["synthetic-county-1", "synthetic-county-2", "synthetic-county-3", "stutsman-nd"]
CONF = {"counties": COUNTIES, "years": [2010, 2016], "val_counties": ["synthetic-county-3"],
        "test_counties": ["synthetic-county-2"]}
CLUSTER = {"spark_master": "spark://spark-master:7077", "cluster_backend": "none"}

pytestmark = [pytest.mark.compose, pytest.mark.timeout(5400)]


def _run(*args: str, timeout: float = 600, check: bool = True) -> str:
    done = subprocess.run(args, cwd=PROJECT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)}: exit {done.returncode}\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


@functools.cache
def _compose_command() -> tuple[str, ...]:
    """Compose v2 where present, else docker-compose 1.29 (as scripts/stack.sh chooses)."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    return ("docker", "compose") if v2 else ("docker-compose",)


def _compose(*args: str, timeout: float = 600, check: bool = True) -> str:
    return _run(*_compose_command(), *args, timeout=timeout, check=check)


def _in_scheduler(code: str) -> Any:
    """Run Python in the scheduler's container; the JSON it prints."""
    return json.loads(_compose("exec", "-T", "airflow-scheduler", "python", "-c", code)
                      .strip().splitlines()[-1])


class Api:
    """The stack's REST API as the generated admin."""

    def __init__(self) -> None:
        passwords = json.loads(_compose(
            "exec", "-T", "airflow-apiserver", "cat",
            "/opt/airflow/simple_auth_manager_passwords.json.generated"))
        r = requests.post(f"{API}/auth/token", timeout=30,
                          json={"username": "admin", "password": passwords["admin"]})
        r.raise_for_status()
        self.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = requests.request(method, f"{API}/api/v2{path}", headers=self.headers, timeout=120,
                             **kwargs)
        assert r.ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        return str(self.call("POST", f"/dags/{dag_id}/dagRuns",
                             json={"logical_date": None, "conf": conf})["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"])

    def state(self, dag_id: str, run_id: str) -> str:
        return str(self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def wait(self, dag_id: str, run_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (state := self.state(dag_id, run_id)) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"{dag_id} {run_id} still {state}"
            time.sleep(5)
        assert state == "success", f"{dag_id} {run_id} {state}: {self.failed_logs(dag_id, run_id)}"

    def failed_logs(self, dag_id: str, run_id: str) -> str:
        tis = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return "; ".join(f"{t['task_id']}[{t['map_index']}] {t['state']}"
                         for t in tis["task_instances"] if t["state"] != "success")


def _published_ports() -> list[tuple[str, str, str]]:
    """(container, host address, host port) of every published port of the stack."""
    found = []
    for cid in _compose("ps", "-q").split():
        info = json.loads(_run("docker", "inspect", cid))[0]
        for bindings in (info["NetworkSettings"]["Ports"] or {}).values():
            for b in bindings or []:
                found.append((info["Name"].lstrip("/"), b["HostIp"], b["HostPort"]))
    return found


@pytest.fixture(scope="module")
def stack():
    """The stack up (synthetic counties generated first, as the demo does); torn down with
    its volumes at the end, whatever happened."""
    if not (PROJECT / "sample" / "synthetic" / "counties.json").exists():
        _run(str(PROJECT / ".venv" / "bin" / "landuse"), "synth", "--out",
             str(PROJECT / "sample" / "synthetic"), "--counties", "5")
    _compose("down", "-v", check=False)
    try:
        _run(str(PROJECT / "scripts" / "stack.sh"), "up", timeout=3600)
        yield
    finally:
        _compose("logs", "--tail", "200", check=False)
        _compose("down", "-v", check=False)


def test_the_documented_stack_runs_the_chain_and_keeps_its_state(stack):
    ports = _published_ports()
    assert {p for _, _, p in ports} >= {"8080", "8081", "5000", "10000"}, ports
    assert {a for _, a, _ in ports} == {"127.0.0.1"}, ports

    api = Api()
    for dag_id in ("landuse_training", "change_detection"):  # paused at creation, as is usual
        api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    api.wait("naip_dataset", api.trigger("naip_dataset", CONF), timeout=1800)
    deadline = time.monotonic() + 300  # the dataset Asset schedules training
    while not (training := api.runs("landuse_training")) and time.monotonic() < deadline:
        time.sleep(5)
    assert training, "the dataset Asset scheduled no training run"
    api.wait("landuse_training", training[0]["dag_run_id"], timeout=2400)

    # Scoring on the compose cluster; one spark-worker container killed while it runs.
    run = api.trigger("landuse_scoring", {**CLUSTER, "year": 2010})
    deadline = time.monotonic() + 900
    while not [a for a in json.loads(_compose("exec", "-T", "spark-master", "curl", "-s",
                                              "http://localhost:8080/json/"))["activeapps"]
               if a["state"] == "RUNNING"]:
        assert api.state("landuse_scoring", run) not in ("success", "failed"), \
            "scoring ended before its Spark application was seen running"
        assert time.monotonic() < deadline, "no Spark application ran on the cluster"
        time.sleep(2)
    workers = _compose("ps", "-q", "spark-worker").split()
    assert len(workers) == 2, workers
    _run("docker", "kill", workers[0])
    api.wait("landuse_scoring", run, timeout=1800)
    api.wait("landuse_scoring", api.trigger("landuse_scoring", {**CLUSTER, "year": 2016}),
             timeout=1800)
    once = _in_scheduler(f"counties = {COUNTIES!r}" + """
import json, pandas as pd
from pathlib import Path
root = Path("/opt/airflow/output")
out = {}
for county in counties:
    m = pd.read_parquet(root / "naip" / county / "2010" / "manifest.parquet")
    p = pd.read_parquet(root / "predictions" / f"county={county}" / "year=2010"
                        / "predictions.parquet")
    out[county] = [len(m), len(p), int(p["tile_id"].duplicated().sum()),
                   sorted(set(m["tile_id"])) == sorted(p["tile_id"]),
                   int(p["error"].notna().sum())]
print(json.dumps(out))
""")
    for _county, (tiles, scored, duplicated, same, errors) in once.items():
        assert tiles and scored == tiles and not duplicated and same and not errors, once

    deadline = time.monotonic() + 1800  # the predictions Assets schedule change_detection
    while True:
        runs = api.runs("change_detection")
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            reports = requests.get(f"{API}/landuse/api/reports", headers=api.headers,
                                   timeout=60)
            if reports.ok and any(r.get("county") == "stutsman-nd"
                                  for r in reports.json().get("reports", [])):
                break
        assert time.monotonic() < deadline, runs
        time.sleep(10)
    assert {r["state"] for r in runs} == {"success"}, runs
    page = requests.get(f"{API}/landuse/change/stutsman-nd/2010-2016", headers=api.headers,
                        timeout=60)
    assert page.ok and "stutsman-nd" in page.text, page.status_code
    assert requests.get(f"{API}/landuse/api/reports", timeout=60).status_code in (401, 403)
    champion = _in_scheduler("import json; print(open('/opt/airflow/output/models/"
                             "champion.json').read().replace(chr(10), ''))")

    # down, then up with the volumes kept: the champion, the reports and the run history.
    _compose("down", timeout=900)
    _run(str(PROJECT / "scripts" / "stack.sh"), "up", timeout=3600)
    api = Api()
    kept = {r["dag_run_id"] for r in api.runs("change_detection")}
    assert {r["dag_run_id"] for r in runs} <= kept, "run history lost"
    assert _in_scheduler("import json; print(open('/opt/airflow/output/models/"
                         "champion.json').read().replace(chr(10), ''))") == champion
    report = requests.get(f"{API}/landuse/api/change/stutsman-nd/2010-2016",
                          headers=api.headers, timeout=60)
    assert report.ok, report.status_code

    _compose("down", "-v", timeout=900)
    left = _run("docker", "volume", "ls", "-q", "--filter", f"name={NAME}_").split()
    assert not left, left
