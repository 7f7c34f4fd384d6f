"""landuse_training with dag.test(): candidates tracked in MLflow, the best promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, synthetic: Path) -> Path:
    """A storage root holding a small split of the synthetic counties."""
    from landuse import counties, splits
    from landuse.tiling import TilingConfig, build_county

    root = tmp_path_factory.mktemp("root")
    registry = counties.load_registry(str(synthetic / "counties.json"))
    manifests = [r.manifest_url for county in registry.values()
                 for r in build_county(county, [2010, 2016], str(root),
                                       TilingConfig(purity_threshold=0.75))]
    splits.build_dataset(manifests, str(root / "naip" / "dataset"), seed=0)
    return root


def _run(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "landuse_training.py")).get_dag(
        "landuse_training")
    return dag.test(run_conf=conf)


def test_scheduled_on_the_dataset_asset(dagbag):
    dag = dagbag.dags["landuse_training"]
    assert [a.uri for a in dag.timetable.asset_condition.objects] == ["landuse://datasets/naip"]
    train = dag.get_task("train_candidate")
    assert train.pool == "gpu"


def test_trains_tracks_and_promotes(airflow_db, dataset):
    import mlflow
    from mlflow import MlflowClient

    from landuse.models.bundle import load_bundle

    run = _run({"storage_root": str(dataset), "methods": ["head"], "epochs": 1})
    assert run.state == "success"
    champion = json.loads((dataset / "models" / "champion.json").read_text())
    bundle = load_bundle(champion["bundle"])
    assert bundle.spec.lineage.split_sha256 and bundle.spec.metrics["accuracy"] is not None
    mlflow.set_tracking_uri(f"sqlite:///{airflow_db}/mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias("landuse", "champion")
    assert int(version.version) == champion["version"]
    tracked = client.get_run(champion["run_id"])
    assert tracked.data.metrics["accuracy"] == pytest.approx(champion["accuracy"])
    assert "confusion.png" in {a.path for a in client.list_artifacts(champion["run_id"])}


def test_failed_candidate_changes_no_champion(airflow_db, dataset, tmp_path):
    import pandas as pd

    split = pd.read_parquet(dataset / "naip" / "dataset" / "split.parquet")
    broken = Path(split["image_url"].iloc[0])
    original = broken.read_bytes()
    before = (dataset / "models" / "champion.json").read_bytes() if (
        dataset / "models" / "champion.json").exists() else None
    broken.write_bytes(original[:100])  # a truncated PNG in the training set
    try:
        run = _run({"storage_root": str(dataset), "methods": ["head"], "epochs": 1})
    finally:
        broken.write_bytes(original)
    assert run.state == "failed"
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        states = {ti.task_id: (ti.state, ti.try_number)
                  for ti in session.query(TaskInstance).filter_by(run_id=run.run_id)}
    assert states["train_candidate"] == ("failed", 1)  # a corrupt tile is not retried
    assert states["select_best"][0] == "upstream_failed"
    after = (dataset / "models" / "champion.json").read_bytes() if (
        dataset / "models" / "champion.json").exists() else None
    assert after == before
