"""A backfill over two years with a real scheduler: ``airflow backfill create`` on
naip_refresh processes each NAIP vintage once, and the predictions Assets it emits schedule
change_detection, which publishes the county's change report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from landuse import labels
from landuse.models.preprocessing import PreprocessSpec
from onnx_kit import write_onnx_bundle

COUNTY = "synthetic-county-1"


@pytest.fixture(scope="module")
def deployed(airflow_stack, tmp_path_factory: pytest.TempPathFactory):
    """The stack with a synthetic county flown in 2015 and 2016 and a champion model."""
    from landuse.synthetic import make_synthetic

    synthetic = tmp_path_factory.mktemp("synthetic-2015-2016")
    make_synthetic(str(synthetic), counties=1, years=(2015, 2016), size_m=1344.0, res_m=4.0,
                   parcel_m=500.0, seed=7)
    root = airflow_stack.home / "output"
    bundle = write_onnx_bundle(root / "models" / "tiny", PreprocessSpec(input_size=224),
                               classes=labels.CLASSES)
    (root / "models" / "champion.json").write_text(json.dumps({"bundle": str(bundle)}))
    (airflow_stack.home / "counties.json").write_text(
        json.dumps({"include": [str(synthetic / "counties.json")]}))
    return airflow_stack


@pytest.mark.timeout(900)
def test_backfill_over_years_processes_each_vintage_once_and_reports_change(deployed):
    root = deployed.home / "output"
    conf = {"counties": [COUNTY], "registry": str(deployed.home / "counties.json"),
            "storage_root": str(root)}
    deployed.cli("backfill", "create", "--dag-id", "naip_refresh", "--from-date", "2015-01-01",
                 "--to-date", "2016-01-01", "--dag-run-conf", json.dumps(conf))
    deployed.up()

    # Unpaused, the yearly DAG also gets its latest scheduled run, which may overlap the
    # backfill's runs (they are not counted against its max_active_runs): whichever run
    # gets to a vintage first processes it, the other skips it.
    runs = deployed.wait_for_runs("naip_refresh", 3, timeout=600)
    assert {r["state"] for r in runs} == {"success"}, runs
    backfill = sorted(r["logical_date"][:4] for r in runs if _kind(r) == "backfill")
    assert backfill == ["2015", "2016"]
    processed = [s for r in runs for s in deployed.task_states("naip_refresh", r["run_id"],
                                                                 "process")]
    assert processed.count("success") == 2, processed  # each vintage once

    for year in (2015, 2016):  # tiled and scored once: one row per tile with imagery
        manifest = pd.read_parquet(root / "naip" / COUNTY / str(year) / "manifest.parquet")
        preds = pd.read_parquet(root / "predictions" / f"county={COUNTY}" / f"year={year}"
                                / "predictions.parquet")
        assert sorted(preds["tile_id"]) == sorted(manifest.dropna(subset=["image_url"])
                                                  ["tile_id"])
        assert preds["error"].isna().all()

    # The 2015 predictions schedule a run with nothing to compare; 2016's, the report.
    changes = deployed.wait_for_runs("change_detection", 2, timeout=300)
    assert {r["state"] for r in changes} == {"success"}, changes
    assert {_kind(r) for r in changes} == {"asset_triggered"}
    report = root / "change" / f"county={COUNTY}" / "2015-2016"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["reference"] == "predictions"  # both vintages scored by the same model
    assert summary["planted_change"]["reference"] > 0  # the truth raster was found and read
    for name in ("report.md", "comparison.png", "changes.geojson", "change.tif"):
        assert (report / name).stat().st_size > 0


def _kind(run: dict[str, str]) -> str:
    """The run type, from the run id (``backfill__…``, ``scheduled__…``, …)."""
    return run["run_id"].split("__", 1)[0]
