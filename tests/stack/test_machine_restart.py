"""The machine restarts mid-DAG: every Airflow process (and the task it runs) is killed
with SIGKILL while naip_dataset is tiling counties, then the components are started again.
The run resumes: counties finished before the crash are not redone, the interrupted one is
retried from scratch, and no tile is duplicated."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

COUNTIES = ["synthetic-county-1", "synthetic-county-2", "synthetic-county-3"]
YEARS = (2010, 2016)


def _fingerprint(folder: Path) -> dict[str, tuple[float, str]]:
    """Modification time and content hash of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime, hashlib.sha256(p.read_bytes())
                                          .hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def deployed(airflow_stack, tmp_path_factory: pytest.TempPathFactory):
    """Three synthetic counties, and a scheduler that takes over a dead scheduler's tasks
    within seconds (the defaults wait 5 minutes to check for orphans)."""
    from landuse.synthetic import make_synthetic

    synthetic = tmp_path_factory.mktemp("synthetic-3")
    make_synthetic(str(synthetic), counties=3, size_m=2240.0, res_m=4.0, parcel_m=500.0, seed=3)
    (airflow_stack.home / "counties.json").write_text(
        json.dumps({"include": [str(synthetic / "counties.json")]}))
    airflow_stack.env.update({
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    })
    airflow_stack.up()
    return airflow_stack


@pytest.mark.timeout(900)
def test_a_crash_mid_dag_resumes_without_redoing_finished_counties(deployed):
    root = deployed.home / "output"
    conf = {"counties": COUNTIES, "years": list(YEARS), "storage_root": str(root),
            "registry": str(deployed.home / "counties.json")}
    deployed.cli("dags", "trigger", "naip_dataset", "-c", json.dumps(conf))

    def done(county: str) -> bool:
        return all((root / "naip" / county / str(y) / "manifest.parquet").exists()
                   for y in YEARS)

    deadline = time.monotonic() + 300
    while not any(done(c) for c in COUNTIES):
        assert time.monotonic() < deadline, "no county finished within 300 s"
        time.sleep(0.5)
    finished = [c for c in COUNTIES if done(c)]
    assert len(finished) < len(COUNTIES), "every county finished before the crash"
    before = {c: _fingerprint(root / "naip" / c) for c in finished}

    for name in list(deployed.processes):  # the power goes out
        deployed.stop(name, signal.SIGKILL)
    crashed = time.monotonic()
    time.sleep(2)
    deployed.up()

    (run,) = deployed.wait_for_runs("naip_dataset", 1, timeout=600)
    assert run["state"] == "success", run
    print(f"finished before the crash: {finished}; run succeeded "
          f"{time.monotonic() - crashed:.0f} s after it")
    for county in finished:  # not redone: same bytes, same modification times
        assert _fingerprint(root / "naip" / county) == before[county]
    for county in COUNTIES:
        for year in YEARS:
            folder = root / "naip" / county / str(year)
            manifest = pd.read_parquet(folder / "manifest.parquet")
            assert manifest["tile_id"].is_unique
            assert manifest["image_url"].isna().all()  # manifests only: tiles stay in scenes
            assert sorted(p.name for p in folder.iterdir()) == ["manifest.parquet"]  # no debris
    retried = [s for s in deployed.task_states("naip_dataset", run["run_id"], "tile_county")]
    assert retried.count("success") == len(COUNTIES)
    assert json.loads((root / "naip" / "dataset" / "summary.json").read_text())["train"]
