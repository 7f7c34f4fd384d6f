"""Scoring on Spark: a county-year from the Airflow worker, or a packaged job by spark-submit.

:class:`SparkScoringOperator` scores one county-year's manifest with the driver in the task
(``local[N]``, or a ``spark://`` master such as a cluster :class:`ScaleClusterOperator`
sized), commits its predictions and emits their Asset event; ``on_kill`` cancels its Spark
jobs, so a killed task frees the cluster at once. Map it over counties::

    SparkScoringOperator.partial(task_id="score_county", year=2016, bundle_path=bundle,
                                 storage_root=root, outlets=[PREDICTIONS]
                                 ).expand(county=["county-a", "county-b"])

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator

from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.stages import score_and_publish

if TYPE_CHECKING:
    from airflow.sdk import Context

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
        framework: onnx, onnx-int8, keras or tflite.
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


class SparkScoringOperator(BaseOperator):
    """Score one county-year's tiles (or those of a batch of counties, in turn) on Spark and
    publish each one's predictions Asset.

    Runs :func:`landuse_airflow.stages.score_and_publish`: the manifest
    ``{storage_root}/naip/{county}/{year}/manifest.parquet`` is scored with the bundle, the
    predictions are committed atomically under ``{storage_root}/predictions``, and an event
    of ``landuse://predictions/{county}/{year}`` is added through the task's
    ``PREDICTIONS`` alias outlet (give the task ``outlets=[PREDICTIONS]``). Bad input (no
    manifest, an invalid bundle) fails at once, without retries.

    Args:
        county: the county's registry name, or a list of names (a batch, so that a DAG
            maps more counties than ``[core] max_map_length``) (templated).
        year: NAIP year (templated; a rendered string is read as an integer).
        bundle_path: model bundle folder or URL (templated).
        storage_root: the storage root, local or ``abfs://`` (templated).
        spark_master: ``local[N]`` or ``spark://host:port`` (templated).
        framework: onnx, onnx-int8, keras or tflite (templated).
        batch_size: tiles per model call (templated).
        **kwargs: BaseOperator arguments.

    Returns (XCom): the Asset event's ``extra`` (county, year, url, tiles, errors, seconds,
    storage_root, accuracy, group_accuracy, model_id); a list of them for a batch.
    """

    template_fields: Sequence[str] = ("county", "year", "bundle_path", "storage_root",
                                      "spark_master", "framework", "batch_size")
    ui_color = "#dae8fc"

    def __init__(
        self,
        *,
        county: str | Sequence[str],
        year: int | str,
        bundle_path: str,
        storage_root: str,
        spark_master: str = "local[2]",
        framework: str = "onnx",
        batch_size: int | str = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.county = county
        self.year = year
        self.bundle_path = bundle_path
        self.storage_root = storage_root
        self.spark_master = spark_master
        self.framework = framework
        self.batch_size = batch_size

    def execute(self, context: Context) -> dict[str, Any] | list[dict[str, Any]]:
        """Score, commit and publish each county; returns the summary (a list for a batch)."""
        from landuse import storage
        from landuse.tiling import manifest_url

        names = [self.county] if isinstance(self.county, str) else list(self.county)
        with fail_fast_on_bad_input():  # checked before Spark starts: none of it would heal
            year, batch_size = _whole(self.year, "year"), _whole(self.batch_size, "batch_size")
            if batch_size < 1:
                raise ValueError(f"batch_size must be at least 1, got {batch_size}")
            for county in names:
                manifest = manifest_url(self.storage_root, county, year)
                if not storage.exists(manifest):
                    raise ValueError(f"no manifest for {county} in {year} ({manifest}): "
                                     "run naip_dataset first")
        summaries = [
            score_and_publish(context, county, year, self.bundle_path, root=self.storage_root,
                              master=self.spark_master, framework=self.framework,
                              batch_size=batch_size)
            for county in names]
        return summaries[0] if isinstance(self.county, str) else summaries

    def on_kill(self) -> None:
        """Cancel the Spark jobs of this task's process (its only Spark application), so
        the executors are freed now; nothing is committed."""
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is None:
            self.log.warning("killed before Spark started: nothing to cancel")
            return
        sc.cancelAllJobs()
        self.log.warning("cancelled the Spark jobs of %s", self.task_id)


def _whole(value: Any, name: str) -> int:
    """A templated whole number (Jinja renders strings); ValueError if it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError as err:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from err
