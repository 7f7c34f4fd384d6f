"""naip_dataset runs end to end with dag.test() on the sample: real ND imagery + synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(tmp_path: Path, synthetic: Path) -> Path:
    """Synthetic counties plus a small box of the real Stutsman County scene."""
    path = tmp_path / "counties.json"
    path.write_text(json.dumps({
        "counties": [{
            "name": "stutsman-nd", "state": "nd", "bbox": [-99.17, 47.01, -99.15, 47.025],
            "naip": str(PROJECT / "sample" / "naip"), "nlcd": None,
        }],
        "include": [str(synthetic / "counties.json")],
    }))
    return path


def _run(dag_id: str, conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / f"{dag_id}.py")).get_dag(dag_id)
    return dag.test(run_conf=conf)


def test_builds_manifests_split_and_emits_asset(airflow_db, registry, tmp_path, monkeypatch):
    """Also past ``[core] max_map_length`` (2 here): three counties tiled by two tasks."""
    from airflow.models.asset import AssetEvent
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    root = tmp_path / "out"
    run = _run("naip_dataset", {"registry": str(registry), "years": [2010, 2016],
                                "storage_root": str(root)})
    assert run.state == "success"
    with create_session() as session:
        tiled = session.query(TaskInstance).filter_by(run_id=run.run_id,
                                                      task_id="tile_county").all()
        assert sorted((t.map_index, str(t.state)) for t in tiled) == [(0, "success"),
                                                                      (1, "success")]
    for county in ("stutsman-nd", "synthetic-county-1", "synthetic-county-2"):
        for year in (2010, 2016):
            manifest = pd.read_parquet(root / "naip" / county / str(year) / "manifest.parquet")
            assert len(manifest) > 0 and (manifest["county"] == county).all()
    split = pd.read_parquet(root / "naip" / "dataset" / "split.parquet")
    train = split[split.split == "train"]
    val = split[split.split == "validation"]
    assert not set(train.county) & set(val.county)
    assert train.groupby("label").size().nunique() == 1  # balanced
    assert "stutsman-nd" not in set(split.county)  # unlabelled: scored later, never trained on
    with create_session() as session:
        event = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).one()
    assert event.extra["url"] == str(root / "naip" / "dataset" / "split.parquet")
    assert event.extra["train"] == len(train)


def test_reviewed_tiles_make_the_real_county_trainable(airflow_db, registry, tmp_path):
    """Analysts' classes on the unlabelled real county's tiles: it trains, split in blocks."""
    from landuse.change.run import change_url
    from landuse.counties import load_registry
    from landuse.review import record
    from landuse.tiling import TilingConfig, build_county

    root = tmp_path / "out"
    county = load_registry(str(registry))["stutsman-nd"]
    [probe] = build_county(county, [2016], str(tmp_path / "probe"), TilingConfig(tile_px=16))
    ids = pd.read_parquet(probe.manifest_url)["tile_id"].tolist()
    report = change_url(str(root), "stutsman-nd", 2010, 2016)
    for i, tile in enumerate(ids):
        record(report, pd.DataFrame({"tile_id": ids}), user="ana", tile_id=tile,
               answer="change", class_b="Forest" if i % 2 else "Cultivated")
    run = _run("naip_dataset", {"registry": str(registry), "years": [2016],
                                "storage_root": str(root), "tile_px": 32})
    assert run.state == "success"
    manifest = pd.read_parquet(root / "naip" / "stutsman-nd" / "2016" / "manifest.parquet")
    assert (manifest["label_source"] == "review").sum() == len(ids)
    assert manifest["trainable"].sum() > 0
    split = pd.read_parquet(root / "naip" / "dataset" / "split.parquet")
    real = split[split["county"] == "stutsman-nd"]
    assert (real["label_source"] == "review").all() and len(real) == manifest["trainable"].sum()
    assert set(real["split"]) == {"train", "validation", "test"}
    assert (real.groupby("tile_id")["split"].nunique() == 1).all()
    summary = json.loads((root / "naip" / "dataset" / "summary.json").read_text())
    assert summary["real_blocks"]["county"] == "stutsman-nd"
    assert summary["synthetic_training"] is False

    off = _run("naip_dataset", {"registry": str(registry), "years": [2016], "tile_px": 32,
                                "storage_root": str(root), "reviews": False})
    assert off.state == "success"
    split = pd.read_parquet(root / "naip" / "dataset" / "split.parquet")
    assert "stutsman-nd" not in set(split["county"])


def test_unknown_county_fails_at_once_without_retries(airflow_db, registry, tmp_path):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    run = _run("naip_dataset", {"registry": str(registry), "counties": ["nowhere"],
                                "storage_root": str(tmp_path / "out")})
    assert run.state == "failed"
    with create_session() as session:
        plan = session.query(TaskInstance).filter_by(run_id=run.run_id, task_id="plan").one()
    assert plan.state == "failed" and plan.try_number == 1  # bad input is not retried
    assert not (tmp_path / "out").exists()


def test_writes_to_blob_storage(airflow_db, registry, azurite, azure_env):
    """The same DAG with an abfs:// storage root, against the real Azure Storage API."""
    from landuse import storage

    root = f"abfs://{azure_env}/landuse"
    run = _run("naip_dataset", {"registry": str(registry), "years": [2016],
                                "counties": ["synthetic-county-1", "synthetic-county-2"],
                                "storage_root": root})
    assert run.state == "success"
    split = storage.read_parquet(f"{root}/naip/dataset/split.parquet").to_pandas()
    assert set(split["split"]) == {"train", "validation"}
    assert split["image_url"].isna().all() and split["scene_url"].notna().all()  # manifests only
    assert storage.exists(f"{root}/naip/synthetic-county-1/2016/manifest.parquet")
