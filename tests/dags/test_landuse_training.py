"""landuse_training with dag.test(): candidates tracked in MLflow, the best challenging the
champion, the champion_model Asset event only when the champion changed."""

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


def _champion_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run_id).all()
        return [e.extra for e in events if e.asset.uri == "landuse://models/champion"]


def _decisions(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "models" / "decisions").glob("*"))]


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
    # the int8 form, timed against fp32 and checked on the validation tiles at training
    # time, kept only where it wins (on this machine's CPU: either way)
    int8 = bundle.spec.metrics["int8"]
    assert int8["fp32_tiles_per_s"] > 0 and int8["int8_tiles_per_s"] > 0, int8
    assert ("onnx-int8" in bundle.spec.formats) == int8["kept"], int8
    assert int8["kept"] or int8["reason"]
    mlflow.set_tracking_uri(f"sqlite:///{airflow_db}/mlflow.db")
    client = MlflowClient()
    version = client.get_model_version_by_alias("landuse", "champion")
    assert int(version.version) == champion["version"]
    tracked = client.get_run(champion["run_id"])
    assert tracked.data.metrics["accuracy"] == pytest.approx(champion["accuracy"])
    assert "confusion.png" in {a.path for a in client.list_artifacts(champion["run_id"])}
    assert champion["bundle"].startswith(str(dataset / "models" / "candidates"))
    assert champion["decision"]["decision"] == "first"
    assert tracked.data.tags["champion_decision"] == "first"
    [event] = _champion_events(run.run_id)
    assert (event["model_id"], event["decision"]) == (champion["model_id"], "first")


def test_champion_is_kept_unless_beaten_or_forced(airflow_db, dataset, monkeypatch):
    from landuse.models import tracking

    def perfect(bundle, split_url, input_size=None):  # a champion no challenger can beat
        return {"accuracy": 1.0, "group_accuracy": 1.0}

    # dag.test() runs the tasks in this process, so the champion's evaluation can be fixed.
    monkeypatch.setattr(tracking, "evaluate_on_validation", perfect)
    pointer = dataset / "models" / "champion.json"
    if not pointer.exists():
        assert _run({"storage_root": str(dataset), "methods": ["head"], "epochs": 1}
                    ).state == "success"
    before = pointer.read_bytes()

    kept = _run({"storage_root": str(dataset), "methods": ["head"], "epochs": 1})
    assert kept.state == "success"
    assert pointer.read_bytes() == before
    assert _champion_events(kept.run_id) == []
    decision = _decisions(dataset)[-1]
    assert (decision["decision"], decision["incumbent_accuracy"]) == ("kept", 1.0)
    assert decision["incumbent_model_id"] == json.loads(before)["model_id"]

    forced = _run({"storage_root": str(dataset), "methods": ["head"], "epochs": 1,
                   "force_promotion": True})
    assert forced.state == "success"
    champion = json.loads(pointer.read_text())
    assert champion["decision"]["decision"] == "forced" and champion["run_id"]
    [event] = _champion_events(forced.run_id)
    assert (event["model_id"], event["decision"]) == (champion["model_id"], "forced")


def test_failed_candidate_changes_no_champion(airflow_db, dataset, tmp_path):
    import pandas as pd

    split = pd.read_parquet(dataset / "naip" / "dataset" / "split.parquet")
    broken = Path(split["scene_url"].iloc[0])
    original = broken.read_bytes()
    before = (dataset / "models" / "champion.json").read_bytes() if (
        dataset / "models" / "champion.json").exists() else None
    broken.write_bytes(original[:100])  # a truncated scene under the training set
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
