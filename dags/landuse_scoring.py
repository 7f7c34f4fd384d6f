"""landuse_scoring: score every tile of each county-year on Spark with the champion model.

``plan`` resolves the model once (the champion by default, so every county of a run uses
the same one), the counties that have a manifest for the year and the Spark master. The
cluster is sized by :class:`~landuse_airflow.operators.cluster.ScaleClusterOperator`:
``scale_up``, a setup task, asks for the target size; ``wait_for_workers`` waits for the
workers in the triggerer (no worker slot held while VMs boot; a timeout fails without
retries); ``scale_down``, the teardown, shrinks the cluster back even when scoring fails.
Counties are scored by :class:`~landuse_airflow.operators.spark_scoring.SparkScoringOperator`,
mapped two at a time (a killed task cancels its Spark jobs); each county-year's predictions
are committed atomically and emitted as an Asset (``landuse://predictions/{county}/{year}``)
through the ``landuse_predictions`` alias.

Where the cluster is comes from the connection named by ``cluster_conn_id``, never from
the run's conf, so a run cannot send the connection's token to another host: for
``standalone`` a Spark connection (host ``spark://127.0.0.1``, port, extra
``master_web_url``), whose master the counties are then scored on (a master on this
machine is started by ``scale_up`` and stopped when ``scale_down`` leaves no worker); for
``hdinsight`` and ``databricks`` the connection described in
:mod:`landuse_airflow.hooks.cluster`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from landuse_airflow import params
from landuse_airflow.assets import PREDICTIONS
from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.operators.cluster import ScaleClusterOperator
from landuse_airflow.operators.spark_scoring import SparkScoringOperator

log = logging.getLogger(__name__)

# Every ScaleClusterOperator of the run acts on the same cluster, from the same params.
CLUSTER: dict[str, Any] = {
    "backend": "{{ params.cluster_backend }}",
    "conn_id": "{{ params.cluster_conn_id or '' }}",
    "timeout_s": "{{ params.scale_timeout_s }}",
    "poll_s": 5,
    "local_master": True,
}


@dag(
    dag_id="landuse_scoring",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["landuse", "scoring"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "counties": params.counties(),
        "year": Param(2016, type="integer", minimum=2003, maximum=2100, title="NAIP year"),
        "model": Param("champion", type="string", minLength=1, title="Model",
                       description="'champion', or a bundle folder."),
        "framework": Param("onnx", type="string", enum=["onnx", "onnx-int8", "keras", "tflite"],
                           title="Inference framework",
                           description="onnx-int8: the bundle's int8 form, kept at training "
                           "time only where it was faster than fp32 and agreed with it on "
                           "the machine that built it (usually CPUs with VNNI). A bundle "
                           "without it fails in plan, saying why (its metrics.int8). Its "
                           "predictions carry their own model id."),
        "batch_size": Param(32, type="integer", minimum=1, maximum=1024, title="Batch size"),
        "spark_master": Param("local[2]", type="string", title="Spark master",
                              description="local[N], or spark://host:port of a cluster sized "
                              "elsewhere. The standalone backend scores on its "
                              "connection's master instead."),
        "cluster_backend": Param("none", type="string",
                                 enum=["none", "standalone", "hdinsight", "databricks"],
                                 title="Cluster backend"),
        "target_workers": Param(2, type="integer", minimum=0, maximum=1000,
                                title="Workers while scoring"),
        "idle_workers": Param(0, type="integer", minimum=0, title="Workers after scoring"),
        "cluster_conn_id": Param(None, type=["null", "string"], title="Cluster connection",
                                 description="Airflow connection with the cluster's address, "
                                 "settings and credentials: a Spark connection (host, port, "
                                 "extra master_web_url) for standalone; see "
                                 "landuse_airflow.triggers.cluster for HDInsight and "
                                 "Databricks."),
        "scale_timeout_s": Param(600, type="integer", minimum=1, title="Scaling timeout (s)"),
        "storage_root": params.storage_root(),
    },
)
def landuse_scoring() -> None:
    @task
    def plan() -> list[dict[str, Any]]:
        """The model, the county-years to score and the Spark master, resolved once."""
        from airflow.sdk.configuration import conf

        from landuse import storage
        from landuse.refresh import batches
        from landuse_airflow.stages import resolve_model

        p = get_current_context()["params"]
        root, year = p["storage_root"], p["year"]
        with fail_fast_on_bad_input():
            params.check_places(p)  # before anything is read or written
            master = _spark_master(p)
            bundle, model_id = resolve_model(p["model"], root, p["framework"])
            counties = p["counties"] or sorted(
                url.rsplit("/", 3)[-3]
                for url in storage.glob(storage.join(root, "naip", "*", str(year),
                                                     "manifest.parquet"))
            )
            missing = [c for c in counties if not storage.exists(_manifest(root, c, year))]
            if missing or not counties:
                raise ValueError(f"no manifests for {missing or 'any county'} in {year} under "
                                 f"{root}: run naip_dataset first")
        log.info("scoring %d counties in %d with %s (%s)", len(counties), year, model_id,
                 p["framework"])
        # one county per task, in batches beyond what Airflow maps (3,143 US counties)
        return [{"county": batch[0] if len(batch) == 1 else batch, "bundle_path": bundle,
                 "spark_master": master}
                for batch in batches(counties, conf.getint("core", "max_map_length"))]

    planned = plan()
    # Waiting is a separate task from the setup, so that a cluster that never gets there
    # fails the run *after* the setup succeeded, and the teardown still shrinks it.
    up = ScaleClusterOperator(task_id="scale_up", target_workers="{{ params.target_workers }}",
                              wait=False, **CLUSTER)
    ready = ScaleClusterOperator(task_id="wait_for_workers",
                                 target_workers="{{ params.target_workers }}", **CLUSTER)
    scored = SparkScoringOperator.partial(
        task_id="score_county", year="{{ params.year }}", storage_root="{{ params.storage_root }}",
        framework="{{ params.framework }}", batch_size="{{ params.batch_size }}",
        max_active_tis_per_dagrun=2, outlets=[PREDICTIONS],
    ).expand_kwargs(planned)
    down = ScaleClusterOperator(task_id="scale_down", target_workers="{{ params.idle_workers }}",
                                **CLUSTER).as_teardown(setups=up)
    planned >> up >> ready >> scored >> down


def _manifest(root: str, county: str, year: int) -> str:
    from landuse.tiling import manifest_url

    return manifest_url(root, county, year)


def _spark_master(p: Any) -> str:
    """Where counties are scored: the standalone connection's master, else ``spark_master``
    (which, with the standalone backend, may only repeat the connection's master)."""
    if p["cluster_backend"] != "standalone" or not p["cluster_conn_id"]:
        return str(p["spark_master"])  # standalone without a connection: scale_up says so
    from landuse.cluster.standalone import StandaloneCluster
    from landuse_airflow.hooks.cluster import ClusterScalerHook

    scaler = ClusterScalerHook("standalone", p["cluster_conn_id"]).get_conn()
    assert isinstance(scaler, StandaloneCluster)
    master = scaler.master_url
    if p["spark_master"].startswith("spark://") and p["spark_master"] != master:
        raise ValueError(f"spark_master {p['spark_master']} is not the master of the "
                         f"cluster connection {p['cluster_conn_id']} ({master}); "
                         "leave spark_master at its default with the standalone backend")
    return master


landuse_scoring()
