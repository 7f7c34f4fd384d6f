"""landuse_scoring with dag.test(): mapped counties on Spark, one Asset per county-year."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = ["Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, synthetic: Path) -> Path:
    """Manifests and tiles of the synthetic counties for 2016."""
    from landuse import counties
    from landuse.tiling import TilingConfig, build_county

    out = tmp_path_factory.mktemp("scoring-dag")
    for county in counties.load_registry(str(synthetic / "counties.json")).values():
        build_county(county, [2016], str(out), TilingConfig(tile_px=64))
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny imported ONNX model: channel means -> linear -> softmax over the six classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from landuse.models.importer import import_onnx
    from landuse.models.preprocessing import PreprocessSpec

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (3, len(CLASSES))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 64, 64, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 6])],
        initializer=[numpy_helper.from_array(w, "w")])
    folder = tmp_path_factory.mktemp("model")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8),
              str(folder / "tiny.onnx"))
    spec = PreprocessSpec(input_size=64, mean=(120.0, 120.0, 120.0))
    return import_onnx(folder / "tiny.onnx", folder / "bundle", classes=CLASSES,
                       preprocessing=spec, name="tiny").path


def _run(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "landuse_scoring.py")).get_dag(
        "landuse_scoring")
    return dag.test(run_conf=conf)


def test_scores_each_county_and_emits_its_asset(airflow_db, root, bundle):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    run = _run({"storage_root": str(root), "year": 2016, "model": str(bundle)})
    assert run.state == "success"
    for county in ("synthetic-county-1", "synthetic-county-2"):
        manifest = pd.read_parquet(root / "naip" / county / "2016" / "manifest.parquet")
        predictions = pd.read_parquet(
            root / "predictions" / f"county={county}" / "year=2016" / "predictions.parquet")
        # Every tile of the manifest, once: scoring reads the scenes, not only the chips.
        assert sorted(predictions["tile_id"]) == sorted(manifest["tile_id"])
    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()
        uris = sorted(e.asset.uri for e in events)
        tiles = {e.asset.uri: e.extra["tiles"] for e in events}
    assert uris == [f"landuse://predictions/synthetic-county-{i}/2016" for i in (1, 2)]
    assert all(n > 0 for n in tiles.values())


def test_year_without_manifests_fails_before_scaling(airflow_db, root, bundle):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    run = _run({"storage_root": str(root), "year": 2020, "model": str(bundle)})
    assert run.state == "failed"
    with create_session() as session:
        states = {ti.task_id: ti.state
                  for ti in session.query(TaskInstance).filter_by(run_id=run.run_id)}
    assert states["plan"] == "failed" and states["scale_up"] != "success"


def test_scores_on_a_standalone_cluster_grown_and_shrunk_by_setup_and_teardown(
        airflow_db, root, bundle, tmp_path, monkeypatch):
    """A real master and two workers on loopback, started by the DAG and stopped after.

    The master's address comes from a Spark connection (never from the run's conf), and
    the workers' state lives in the shared state folder ($LANDUSE_STATE_DIR)."""
    import json
    import urllib.request

    from landuse.cluster.standalone import free_port

    monkeypatch.delenv("LANDUSE_SPARK_WORK_DIR", raising=False)
    monkeypatch.setenv("LANDUSE_STATE_DIR", str(tmp_path / "state"))
    port, web = free_port(), free_port()
    web_url = f"http://127.0.0.1:{web}"
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_SCORING_TEST", json.dumps({
        "conn_type": "spark", "host": "spark://127.0.0.1", "port": port,
        "extra": {"master_web_url": web_url}}))
    run = _run({"storage_root": str(root), "year": 2016, "model": str(bundle),
                "counties": ["synthetic-county-1"], "cluster_backend": "standalone",
                "cluster_conn_id": "spark_scoring_test",
                "target_workers": 2, "idle_workers": 0, "scale_timeout_s": 120})
    assert run.state == "success"
    state = tmp_path / "state" / "spark-standalone"
    assert json.loads((state / "workers.json").read_text()) == []  # both started, both stopped
    assert len(list((state / "logs").glob("worker-*.log"))) == 2
    assert not (state / "master.json").exists()
    predictions = pd.read_parquet(
        root / "predictions" / "county=synthetic-county-1" / "year=2016" / "predictions.parquet")
    assert predictions["error"].isna().all() and predictions["tile_id"].is_unique
    with pytest.raises(OSError):  # the teardown stopped the workers and the master
        json.load(urllib.request.urlopen(f"{web_url}/json/", timeout=2))


def test_standalone_master_comes_from_a_connection_not_the_conf(airflow_db, root, bundle):
    """Without a cluster connection the run's conf cannot name a master: fail, no retry."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    run = _run({"storage_root": str(root), "year": 2016, "model": str(bundle),
                "counties": ["synthetic-county-1"], "cluster_backend": "standalone",
                "spark_master": "spark://127.0.0.1:7077", "target_workers": 1})
    assert run.state == "failed"
    with create_session() as session:
        states = {ti.task_id: (ti.state, ti.try_number)
                  for ti in session.query(TaskInstance).filter_by(run_id=run.run_id)}
    assert states["scale_up"] == ("failed", 1)
    assert states["score_county"][0] == "upstream_failed"


def test_cluster_that_never_grows_fails_clearly_and_is_still_shrunk(
        airflow_db, root, bundle, monkeypatch):
    """A Databricks cluster that accepts resizes but has no nodes to grow with."""
    import json

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from cluster_fakes import FakeCluster, serve

    fake = FakeCluster("databricks", workers=0, target=0, capacity=0, polls_to_finish=1,
                       cluster_id="c-1", token="secret-token")
    with serve(fake) as api:
        monkeypatch.setenv("AIRFLOW_CONN_FAKE_DATABRICKS", json.dumps({
            "conn_type": "databricks", "host": api.url, "password": "secret-token",
            "extra": {"cluster_id": "c-1"}}))
        run = _run({"storage_root": str(root), "year": 2016, "model": str(bundle),
                    "counties": ["synthetic-county-2"], "cluster_backend": "databricks",
                    "cluster_conn_id": "fake_databricks", "target_workers": 3,
                    "idle_workers": 0, "scale_timeout_s": 2})
    assert run.state == "failed"
    with create_session() as session:
        states = {ti.task_id: (ti.state, ti.try_number)
                  for ti in session.query(TaskInstance).filter_by(run_id=run.run_id)}
    assert states["wait_for_workers"] == ("failed", 1)  # a timeout is not retried
    assert states["score_county"][0] == "upstream_failed"
    assert states["scale_down"][0] == "success"  # the teardown still shrank the cluster
    assert fake.resizes == [3, 0]
    assert fake.errors == []
