"""Scoring on a Spark cluster through the Spark provider's ``SparkSubmitOperator``.

:func:`spark_submit_scoring` builds a ``SparkSubmitOperator`` that submits the packaged job
(``landuse/scoring/job.py``) with its arguments and the settings scoring relies on. The
cluster comes from an Airflow Spark connection (``conn_id``): its host is the master URL
(``spark://host:7077``, ``yarn``, ``k8s://...`` or ``local[2]``), and deploy mode and
spark-submit binary come from its extras, as the provider documents.

Requirements on the cluster side: the Python given as ``python`` (``spark.pyspark.python``)
has the landuse package installed; the bundle folder is readable where the driver runs
(client mode: this Airflow worker) and Spark ships it to the executors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

# Settings the job depends on; the caller's ``conf`` is applied on top.
_SCORING_CONF: dict[str, str] = {
    # One math-library thread per Python worker: Spark already runs one task per core, so
    # more threads would only oversubscribe them (the runners get threads=1 as well).
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
    # Reused Python workers keep their loaded model between tasks (see landuse.scoring.spark).
    "spark.python.worker.reuse": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def job_script() -> str:
    """Path of the packaged Spark job, ``landuse/scoring/job.py``, in the installed package.

    Found without importing the job, so DAG parsing does not pay for pandas or pyspark.
    """
    import landuse

    return str(Path(landuse.__file__).resolve().parent / "scoring" / "job.py")


def spark_submit_scoring(
    task_id: str,
    *,
    conn_id: str = "spark_default",
    source: str,
    bundle_path: str,
    out: str,
    framework: str = "onnx",
    batch_size: int = 32,
    threads: int = 1,
    partitions: int | None = None,
    python: str | None = None,
    application: str | None = None,
    conf: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> SparkSubmitOperator:
    """A ``SparkSubmitOperator`` that scores ``source`` with ``bundle_path`` into ``out``.

    Args:
        task_id: the task's id.
        conn_id: Airflow Spark connection naming the master (host) and deploy mode (extra).
        source: manifest(s) or a folder / glob of PNG tiles (templated, as are the rest of
            the job's arguments and ``conf``).
        bundle_path: model bundle folder, readable by the driver.
        out: storage root of the predictions (``{out}/county=*/year=*/predictions.parquet``).
        framework: onnx, keras or tflite.
        batch_size: tiles per model call.
        threads: inference threads per Python worker.
        partitions: override the job's work-sized partition count.
        python: the cluster's Python for driver and workers (``spark.pyspark.python``);
            default ``$PYSPARK_PYTHON`` here, else this interpreter (right for a local master).
        application: the job script as the submitting machine sees it; default
            :func:`job_script`.
        conf: extra Spark settings; they win over the defaults here.
        **kwargs: passed to ``SparkSubmitOperator`` (``py_files``, ``executor_memory``,
            ``retries``...).

    Raises:
        ValueError: a numeric argument below 1.
    """
    for name, value in (("batch_size", batch_size), ("threads", threads),
                        ("partitions", partitions)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    settings = {
        "spark.pyspark.python": python or os.environ.get("PYSPARK_PYTHON") or sys.executable,
        **_SCORING_CONF,
        **(conf or {}),
    }
    args = ["--source", source, "--bundle", bundle_path, "--out", out,
            "--framework", framework, "--batch-size", str(batch_size), "--threads", str(threads)]
    if partitions is not None:
        args += ["--partitions", str(partitions)]
    kwargs.setdefault("name", f"landuse-scoring-{task_id}")
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=conn_id,
        application=application or job_script(),
        application_args=args,
        conf=settings,
        **kwargs,
    )
