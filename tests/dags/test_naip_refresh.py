"""naip_refresh with dag.test(): new vintages of every county tiled and scored once, the
fan-out batched under ``[core] max_map_length``, and a rerun that finds nothing to do."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from landuse import labels
from landuse.models.preprocessing import PreprocessSpec
from landuse.refresh import lease_history
from onnx_kit import write_onnx_bundle

PROJECT = Path(__file__).resolve().parents[2]
COUNTIES = ("synthetic-county-1", "synthetic-county-2")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A storage root with a champion model."""
    out = tmp_path / "out"
    bundle = write_onnx_bundle(out / "models" / "tiny", PreprocessSpec(input_size=64),
                               classes=labels.CLASSES)
    (out / "models" / "champion.json").write_text(json.dumps({"bundle": str(bundle)}))
    return out


def _run(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "naip_refresh.py")).get_dag("naip_refresh")
    return dag.test(run_conf=conf)


def _mapped(run, task_id: str) -> list[tuple[int, str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter_by(run_id=run.run_id, task_id=task_id).all()
        return sorted((ti.map_index, str(ti.state)) for ti in tis)


def test_batches_counties_beyond_max_map_length_and_processes_each_year_once(
        airflow_db, synthetic: Path, root: Path, monkeypatch):
    """With room for one mapped task, both counties go in one batch: every county-year is
    processed, in order, under its own lease; a second run finds nothing to do."""
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "1")
    conf = {"registry": str(synthetic / "counties.json"), "storage_root": str(root),
            "tile_px": 64, "spark_master": "local[1]"}
    run = _run(conf)
    assert run.state == "success"
    assert _mapped(run, "process") == [(0, "success")]  # 2 counties, 1 task: batched
    for county in COUNTIES:
        for year in (2010, 2016):
            manifest = pd.read_parquet(root / "naip" / county / str(year) / "manifest.parquet")
            preds = pd.read_parquet(root / "predictions" / f"county={county}"
                                    / f"year={year}" / "predictions.parquet")
            assert len(preds) > 0 and preds["tile_id"].is_unique  # scored once
            assert set(preds["tile_id"]) <= set(manifest["tile_id"])
            [lease] = lease_history(str(root), county, year)
            assert lease["outcome"] == "processed" and lease["released_at"] is not None
    # A county's years in order (its change report needs the year before).
    firsts = {c: [lease_history(str(root), c, y)[0]["claimed_at"] for y in (2010, 2016)]
              for c in COUNTIES}
    assert all(a < b for a, b in firsts.values())

    again = _run(conf)
    assert again.state == "success"
    assert _mapped(again, "process") == [(-1, "skipped")]  # nothing new: none mapped
    assert all(len(lease_history(str(root), c, y)) == 1 for c in COUNTIES
               for y in (2010, 2016))


def test_within_max_map_length_one_task_per_county(airflow_db, synthetic: Path, root: Path):
    """Forced years re-process even what is done, one mapped task per county."""
    conf = {"registry": str(synthetic / "counties.json"), "storage_root": str(root),
            "tile_px": 64, "spark_master": "local[1]", "years": [2016]}
    run = _run(conf)
    assert run.state == "success"
    assert _mapped(run, "process") == [(0, "success"), (1, "success")]
    owners = {c: lease_history(str(root), c, 2016)[0]["owner"] for c in COUNTIES}
    assert owners["synthetic-county-1"].endswith("/process/0")
    assert owners["synthetic-county-2"].endswith("/process/1")


def test_int8_form_scores_the_refresh_and_a_bundle_without_it_fails_at_discover(
        airflow_db, synthetic: Path, root: Path):
    """framework=onnx-int8: a champion without the int8 form fails in ``discover`` on the
    first try (nothing tiled); with it, the county-year's predictions carry the int8 id."""
    import numpy as np
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from landuse.models.bundle import load_bundle
    from landuse.models.quantize import add_int8

    conf = {"registry": str(synthetic / "counties.json"), "storage_root": str(root),
            "tile_px": 64, "spark_master": "local[1]", "years": [2016],
            "counties": ["synthetic-county-1"], "framework": "onnx-int8"}
    run = _run(conf)
    assert run.state == "failed"
    with create_session() as session:
        [ti] = session.query(TaskInstance).filter_by(run_id=run.run_id, task_id="discover")
        assert (str(ti.state), ti.try_number) == ("failed", 1)
    assert not (root / "naip").exists()

    bundle = load_bundle(root / "models" / "tiny")
    tiles = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    add_int8(bundle, tiles[:8], tiles, [labels.CLASSES[i % 3] for i in range(16)],
             force=True)  # int8 scoring is tested here, whether or not it wins on this CPU
    run = _run(conf)
    assert run.state == "success"
    preds = pd.read_parquet(root / "predictions" / "county=synthetic-county-1" / "year=2016"
                            / "predictions.parquet")
    assert len(preds) > 0
    assert set(preds["model_id"]) == {f"{load_bundle(root / 'models' / 'tiny').model_id}+int8"}
