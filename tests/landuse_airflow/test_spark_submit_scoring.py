"""The SparkSubmitOperator path, for real: spark-submit of the packaged job on local[2]."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from landuse.labels import CLASSES
from landuse_airflow.operators.spark_scoring import job_script, spark_submit_scoring

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
