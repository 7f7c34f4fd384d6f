"""A backfill over two years overlapping the scheduled run, with a real scheduler:
``airflow backfill create`` on naip_refresh and the DAG's latest scheduled run plan the same
county-years, and each is processed once (decided by storage, under a per-county-year
lease); two county-years run at once (the ``county_refresh`` pool has two slots); the
predictions Assets schedule change_detection, which publishes each county's report."""

from __future__ import annotations

import json
import time
from collections import Counter
from itertools import combinations
from typing import Any

import pandas as pd
import pytest
import requests

from landuse import labels
from landuse.models.preprocessing import PreprocessSpec
from landuse.refresh import lease_history
from onnx_kit import write_onnx_bundle

COUNTIES = ("synthetic-county-1", "synthetic-county-2")
YEARS = (2015, 2016)
POOL = "county_refresh"


@pytest.fixture(scope="module")
def deployed(airflow_stack, tmp_path_factory: pytest.TempPathFactory):
    """The stack with two synthetic counties flown in 2015 and 2016, a champion model and
    the county pool, closed (0 slots) until every run has planned its work."""
    from landuse.synthetic import make_synthetic

    synthetic = tmp_path_factory.mktemp("synthetic-2015-2016")
    make_synthetic(str(synthetic), counties=2, years=YEARS, size_m=1344.0, res_m=4.0,
                   parcel_m=500.0, seed=7)
    root = airflow_stack.home / "output"
    bundle = write_onnx_bundle(root / "models" / "tiny", PreprocessSpec(input_size=224),
                               classes=labels.CLASSES)
    (root / "models" / "champion.json").write_text(json.dumps({"bundle": str(bundle)}))
    (airflow_stack.home / "counties.json").write_text(
        json.dumps({"include": [str(synthetic / "counties.json")]}))
    airflow_stack.cli("pools", "set", POOL, "0", "county-years at once")
    return airflow_stack


@pytest.mark.timeout(1200)
def test_overlapping_backfill_and_scheduled_runs_process_each_county_year_once(deployed):
    root = deployed.home / "output"
    conf = {"registry": str(deployed.home / "counties.json"), "storage_root": str(root)}
    deployed.cli("backfill", "create", "--dag-id", "naip_refresh", "--from-date", "2015-01-01",
                 "--to-date", "2016-01-01", "--dag-run-conf", json.dumps(conf))
    deployed.up()

    # Unpaused, the yearly DAG also gets its latest scheduled run (2025), which backfill
    # runs do not count against max_active_runs. With the pool closed, all three runs plan
    # before any county-year is done: each plans county-years the others plan too.
    runs = _wait(lambda: _planned(deployed), "every run planned", timeout=400)
    assert sorted(_kind(r) for r in runs) == ["backfill", "backfill", "scheduled"]
    _set_pool_slots(deployed, 2)

    runs = deployed.wait_for_runs("naip_refresh", 3, timeout=600)
    assert {r["state"] for r in runs} == {"success"}, runs

    # Each county-year processed once: one lease says "processed", every other run that
    # planned it waited for that lease and found the predictions committed.
    leases = {(c, y): lease_history(str(root), c, y) for c in COUNTIES for y in YEARS}
    for key, history in leases.items():
        assert [h["outcome"] for h in history].count("processed") == 1, (key, history)
        assert all(h["outcome"] == "skipped" for h in history[1:]), (key, history)
    planners = {_kind_of_owner(h["owner"]) for hs in leases.values() for h in hs}
    assert planners == {"backfill", "scheduled"}  # the runs overlapped on county-years
    done = [h for hs in leases.values() for h in hs if h["outcome"] == "processed"]
    assert any(a["claimed_at"] < b["released_at"] and b["claimed_at"] < a["released_at"]
               and (a["county"], a["year"]) != (b["county"], b["year"])
               for a, b in combinations(done, 2)), done  # two county-years at once

    for county in COUNTIES:
        for year in YEARS:  # scored once: one row per tile, from the manifest
            manifest = pd.read_parquet(root / "naip" / county / str(year) / "manifest.parquet")
            preds = pd.read_parquet(root / "predictions" / f"county={county}" / f"year={year}"
                                    / "predictions.parquet")
            assert len(preds) > 0 and preds["tile_id"].is_unique
            assert set(preds["tile_id"]) <= set(manifest["tile_id"])
            assert preds["error"].isna().all()
    assert _prediction_events(deployed) == {(c, y): 1 for c in COUNTIES for y in YEARS}

    # Each county's 2015 predictions come with nothing to compare; its 2016 ones, a report.
    reports = [root / "change" / f"county={c}" / "2015-2016" / "summary.json"
               for c in COUNTIES]
    _wait(lambda: all(r.exists() for r in reports), "both change reports", timeout=400)
    changes = _wait(lambda: _all_finished(deployed, "change_detection"),
                    "change_detection runs finished", timeout=300)
    assert {r["state"] for r in changes} == {"success"}, changes
    assert {_kind(r) for r in changes} == {"asset_triggered"}
    for summary_json in reports:
        summary = json.loads(summary_json.read_text())
        assert summary["reference"] == "predictions"  # both vintages scored by one model
        assert summary["planted_change"]["reference"] > 0  # the truth raster was read
        for name in ("report.md", "comparison.png", "changes.geojson", "change.tif"):
            assert (summary_json.parent / name).stat().st_size > 0


def _planned(stack) -> list[dict[str, Any]] | None:
    """The refresh runs once three exist and each one's ``discover`` succeeded."""
    runs = stack.runs("naip_refresh")
    if len(runs) < 3:
        return None
    ok = all(stack.task_states("naip_refresh", r["run_id"], "discover") == ["success"]
             for r in runs)
    return runs if ok else None


def _all_finished(stack, dag_id: str) -> list[dict[str, Any]] | None:
    runs = stack.runs(dag_id)
    return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None


def _wait(check, what: str, timeout: float):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _set_pool_slots(stack, slots: int) -> None:
    """Resize the pool through the REST API (the scheduler owns the DB while it runs)."""
    r = requests.patch(f"{stack.api_url}/api/v2/pools/{POOL}", params={"update_mask": "slots"},
                       # The API validates the patch as a whole pool, name and all.
                       json={"pool": POOL, "slots": slots, "include_deferred": False},
                       timeout=30,
                       headers={"Authorization": f"Bearer {stack.token()}"})
    assert r.ok, r.text
    assert r.json()["slots"] == slots


def _prediction_events(stack) -> Counter[tuple[str, int]]:
    """Asset events per county-year of predictions, read from the metadata DB (read-only)."""
    uris = [u for (u,) in stack.query(
        "SELECT a.uri FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.uri LIKE 'landuse://predictions/%%'")]
    return Counter((u.split("/")[-2], int(u.split("/")[-1])) for u in uris)


def _kind(run: dict[str, str]) -> str:
    """The run type, from the run id (``backfill__…``, ``scheduled__…``, …)."""
    return run["run_id"].split("__", 1)[0]


def _kind_of_owner(owner: str) -> str:
    """The run type of a lease's owner (``dag/run_id/task/map_index``)."""
    return owner.split("/")[1].split("__", 1)[0]
