"""The whole chain on a real deployment, driven through the REST API as the UI would:
naip_dataset (triggered) -> landuse_training (scheduled by the dataset Asset; its candidates
train on the Celery worker of the gpu queue) ->
landuse_scoring 2010 and 2016 (triggered) -> change_detection (scheduled by the predictions
Assets), then a change run against Azure Blob (Azurite)
whose credentials must appear in no task log. The API server listens on loopback only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

COUNTIES = ["synthetic-county-1", "synthetic-county-2"]


class Api:
    """The deployment's REST API (v2) with a bearer token."""

    def __init__(self, stack) -> None:
        self.url = f"{stack.api_url}/api/v2"
        self.headers = {"Authorization": f"Bearer {stack.token()}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(5):
            r = requests.request(method, f"{self.url}{path}", headers=self.headers,
                                 timeout=180, **kwargs)
            # A request that lost a database lock was rolled back; retry.
            if r.status_code != 500 or "Database error" not in r.text:
                break
            time.sleep(2 * (attempt + 1))
        assert r.ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.call("POST", f"/dags/{dag_id}/dagRuns",
                        json={"logical_date": None, "conf": conf})
        return str(run["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"])

    def wait(self, dag_id: str, run_id: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                assert state == "success", f"{dag_id} {run_id} {state}"
                return
            time.sleep(3)
        raise AssertionError(f"{dag_id} {run_id} not finished after {timeout} s")


@pytest.fixture(scope="module")
def deployed(airflow_stack, synthetic: Path, azurite: str):
    """The stack up with both Celery workers, the synthetic registry and Azure credentials in
    the environment (as a deployment gets them)."""
    (airflow_stack.home / "counties.json").write_text(
        json.dumps({"include": [str(synthetic / "counties.json")]}))
    airflow_stack.env["AZURE_STORAGE_CONNECTION_STRING"] = azurite
    airflow_stack.up(components=("api-server", "scheduler", "dag-processor", "worker-default",
                                 "worker-gpu"))
    return airflow_stack


def test_api_server_listens_on_loopback_only(deployed):
    server = psutil.Process(deployed.processes["api-server"].pid)
    listening = [c.laddr for p in (server, *server.children(recursive=True))
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening


@pytest.mark.timeout(1500)
def test_chain_through_the_rest_api(deployed, azurite: str, azure_env: str):
    api = Api(deployed)
    root = deployed.home / "output"
    common = {"storage_root": str(root)}

    run = api.trigger("naip_dataset", {**common, "registry": str(deployed.home / "counties.json"),
                                       "counties": COUNTIES, "years": [2010, 2016],
                                       "purity_threshold": 0.75})
    api.wait("naip_dataset", run)
    deadline = time.monotonic() + 120  # the dataset Asset schedules training
    while not (training := api.runs("landuse_training")) and time.monotonic() < deadline:
        time.sleep(3)
    assert [r["run_type"] for r in training] == ["asset_triggered"], training
    api.wait("landuse_training", training[0]["dag_run_id"], timeout=900)
    ran_on: dict[str, set[tuple[str, ...]]] = {}  # task -> its (hostname, queue, executor)
    for task_id, *where in deployed.query(
            "SELECT task_id, hostname, queue, executor FROM task_instance "
            "WHERE dag_id = 'landuse_training' AND state = 'success'"):
        ran_on.setdefault(task_id, set()).add(tuple(where))
    assert ran_on["train_candidate"] == {("worker-gpu", "gpu", "CeleryExecutor")}, ran_on
    assert not {h for tis in ran_on.values() for h, *_ in tis} & {"worker-default"}, ran_on
    assert all(not h.startswith("worker-") for h, *_ in ran_on["select_best"]), ran_on
    for year in (2010, 2016):
        api.wait("landuse_scoring", api.trigger("landuse_scoring", {**common, "year": year}))

    # The predictions Assets schedule change_detection; the 2016 one writes the reports.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = api.runs("change_detection")
        done = [r for r in runs if r["state"] in ("success", "failed")]
        if len(done) == len(runs) and all(
                (root / "change" / f"county={c}" / "2010-2016" / "summary.json").exists()
                for c in COUNTIES):
            break
        time.sleep(3)
    assert runs and {r["state"] for r in runs} == {"success"}, runs
    assert {r["run_type"] for r in runs} == {"asset_triggered"}

    champion = json.loads((root / "models" / "champion.json").read_text())
    assert (Path(champion["bundle"]) / "bundle.json").exists()
    for county in COUNTIES:
        for year in (2010, 2016):
            assert (root / "naip" / county / str(year) / "manifest.parquet").exists()
            assert (root / "predictions" / f"county={county}" / f"year={year}"
                    / "predictions.parquet").exists()
        report = root / "change" / f"county={county}" / "2010-2016"
        summary = json.loads((report / "summary.json").read_text())
        assert summary["model_b"] == champion["model_id"]
        for name in ("report.md", "comparison.png", "changes.geojson", "change.tif",
                     "groups_2016.tif"):
            assert (report / name).stat().st_size > 0

    # A run against Azure Blob: the same county's change, read from and written to Azurite.
    from landuse import storage

    blob_root = f"abfs://{azure_env}/landuse"
    county = COUNTIES[0]
    for rel in (f"naip/{county}/2010/manifest.parquet", f"naip/{county}/2016/manifest.parquet",
                f"predictions/county={county}/year=2010/predictions.parquet",
                f"predictions/county={county}/year=2016/predictions.parquet"):
        storage.write_bytes(f"{blob_root}/{rel}", (root / rel).read_bytes())
    # A manual run asks for a review: the county's review task waits (awaiting_input, no
    # worker slot) until an analyst answers; the scheduler then resumes it and the report
    # is published again with the review's figures.
    run = api.trigger("change_detection", {"storage_root": blob_root, "counties": [county],
                                           "year_a": 2010, "year_b": 2016})
    task = f"/dags/change_detection/dagRuns/{run}/taskInstances/review/0"
    deadline = time.monotonic() + 600
    while (state := _state(api, task)) != "awaiting_input":
        assert state not in ("failed", "upstream_failed") and time.monotonic() < deadline, state
        time.sleep(3)
    report_url = f"{blob_root}/change/county={county}/2010-2016"
    _answer_two_tiles(report_url)
    api.call("PATCH", f"{task}/hitlDetails",
             json={"chosen_options": ["Publish the review"], "params_input": {}})
    api.wait("change_detection", run)
    summary = json.loads(storage.read_bytes(f"{report_url}/summary.json"))
    assert summary["review"]["status"] == "reviewed"
    assert (summary["review"]["reviewed"], summary["review"]["confirmed"]) == (2, 1)

    key = azurite.split("AccountKey=", 1)[1].split(";", 1)[0]
    logs = [*(deployed.home / "logs").rglob("*.log"), *deployed.home.glob("*.log")]
    assert len(logs) > 10
    leaked = [str(p) for p in logs if key in p.read_text(errors="replace")]
    assert not leaked, leaked


def _state(api: Api, task: str) -> str | None:
    """A task instance's state; None while the scheduler has not expanded it yet."""
    r = requests.get(f"{api.url}{task}", headers=api.headers, timeout=60)
    return r.json().get("state") if r.ok else None


def _answer_two_tiles(report_url: str) -> None:
    """An analyst's answers on the first two tiles of the review queue."""
    from landuse import review, storage

    tiles = storage.read_parquet(f"{report_url}/tiles.parquet").to_pandas()
    first, second = review.queue(tiles)["tile_id"][:2]
    review.record(report_url, tiles, user="admin", tile_id=first, answer="change")
    review.record(report_url, tiles, user="admin", tile_id=second, answer="no_change")
