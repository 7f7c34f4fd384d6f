"""Spark scoring operators, for real: spark-submit of the packaged job on local[2], and the
in-task county operator's checks and ``on_kill`` (its scoring runs in the landuse_scoring DAG
test)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk.exceptions import AirflowFailException

from landuse.labels import CLASSES
from landuse_airflow.operators.spark_scoring import (
    SparkScoringOperator,
    job_script,
    spark_submit_scoring,
)

PROBS = [f"p_{c}" for c in CLASSES]


def test_factory_builds_the_submit_command(tmp_path: Path) -> None:
    op = spark_submit_scoring(
        "score", conn_id="spark_cluster", source="{{ params.source }}", bundle_path="/models/b",
        out="{{ params.out }}/{{ ds }}", batch_size=16, partitions=8, python="/opt/venv/python",
        conf={"spark.executor.memory": "2g"}, executor_cores=2,
    )
    assert isinstance(op, SparkSubmitOperator)
    assert op.application == job_script() and Path(op.application).is_file()
    assert op.conf is not None
    assert op.conf["spark.pyspark.python"] == "/opt/venv/python"
    assert op.conf["spark.executorEnv.OMP_NUM_THREADS"] == "1"
    assert op.conf["spark.executor.memory"] == "2g"
    op.render_template_fields({"params": {"source": "/in/m.parquet", "out": "/out"},  # type: ignore[arg-type]
                               "ds": "2024-05-01"})
    assert op.application_args == [
        "--source", "/in/m.parquet", "--bundle", "/models/b", "--out", "/out/2024-05-01",
        "--framework", "onnx", "--batch-size", "16", "--threads", "1", "--partitions", "8",
    ]
    with pytest.raises(ValueError, match="batch_size"):
        spark_submit_scoring("bad", source="s", bundle_path="b", out="o", batch_size=0)


def test_spark_submit_on_local_master_writes_predictions(
    onnx_bundle: Path, onnx_reference: Callable[[np.ndarray], np.ndarray], tiles: Any,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Spark connection whose host is the master URL, as the provider reads it.
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_LOCAL2",
                       json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")  # loopback only on this machine
    manifest = tiles.frame.copy()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    manifest.loc[len(manifest)] = ["broken", "test-county", 2016, str(broken), None]
    source = tmp_path / "manifest.parquet"
    manifest.to_parquet(source)
    out = tmp_path / "predictions"
    op = spark_submit_scoring(
        "score_on_spark", conn_id="spark_local2", source=str(source),
        bundle_path=str(onnx_bundle), out=str(out), batch_size=4,
        python=os.environ.get("PYSPARK_PYTHON", sys.executable),
        conf={"spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1"},
    )
    op.execute(context={})  # type: ignore[arg-type]
    frame = pd.read_parquet(out / "county=test-county" / "year=2016" / "predictions.parquet")
    assert len(frame) == len(manifest) and frame["tile_id"].is_unique
    assert "not a readable image" in frame.set_index("tile_id").loc["broken", "error"]
    good = frame[frame["error"].isna()].set_index("tile_id").loc[tiles.frame["tile_id"]]
    np.testing.assert_allclose(good[PROBS].to_numpy(), onnx_reference(tiles.pixels), atol=1e-5)
    assert list(good["label"]) == list(tiles.frame["label"])


def county_operator(**kwargs: Any) -> SparkScoringOperator:
    options: dict[str, Any] = {"task_id": "score_county", "county": "nowhere", "year": 2016,
                               "bundle_path": "/no/bundle", "storage_root": "/no/root",
                               "spark_master": "local[1]"}
    return SparkScoringOperator(**{**options, **kwargs})


def test_county_operator_renders_its_params_and_rejects_bad_ones(
    onnx_bundle: Path, tmp_path: Path
) -> None:
    op = county_operator(year="{{ params.year }}", batch_size="{{ params.batch_size }}",
                         framework="{{ params.framework }}")
    op.render_template_fields({"params": {"year": 2018, "batch_size": 8,  # type: ignore[arg-type]
                                          "framework": "tflite"}})
    assert (op.year, op.batch_size, op.framework) == ("2018", "8", "tflite")
    for bad, message in (({"year": "twenty"}, "year must be a whole number, got 'twenty'"),
                         ({"batch_size": "0"}, "batch_size must be at least 1, got 0"),
                         ({"batch_size": True}, "batch_size must be a whole number")):
        with pytest.raises(AirflowFailException, match=message):
            county_operator(**bad).execute({})  # type: ignore[arg-type]
    # A county-year without a manifest: bad input, no retry.
    with pytest.raises(AirflowFailException, match="no manifest for nowhere in 2016"):
        county_operator(bundle_path=str(onnx_bundle),
                        storage_root=str(tmp_path)).execute({})  # type: ignore[arg-type]
    # a batch of counties is checked whole before Spark starts
    manifest = tmp_path / "naip" / "here" / "2016" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(b"")
    with pytest.raises(AirflowFailException, match="no manifest for nowhere in 2016"):
        county_operator(county=["here", "nowhere"], bundle_path=str(onnx_bundle),
                        storage_root=str(tmp_path)).execute({})  # type: ignore[arg-type]


def test_county_operator_on_kill_cancels_the_running_spark_job() -> None:
    """Killed mid-job: the task's Spark job is cancelled at once, its executors freed."""
    from landuse.spark import local_spark

    spark = local_spark("kill-test", master="local[1]")
    sc = spark.sparkContext
    errors: list[BaseException] = []

    def slow(x: int) -> int:
        time.sleep(60)
        return x

    def job() -> None:
        try:
            sc.parallelize(range(2), 2).map(slow).count()
        except BaseException as err:  # the cancellation
            errors.append(err)

    running = threading.Thread(target=job, daemon=True)
    started = time.monotonic()
    running.start()
    while not sc.statusTracker().getActiveJobsIds():
        assert time.monotonic() - started < 60, "the job never started"
        time.sleep(0.1)
    county_operator().on_kill()
    running.join(timeout=30)
    assert not running.is_alive() and time.monotonic() - started < 60  # not the 2 x 60 s
    assert len(errors) == 1 and "cancel" in str(errors[0]).lower()
