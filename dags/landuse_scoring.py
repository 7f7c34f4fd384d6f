"""landuse_scoring: score every tile of each county-year on Spark with the champion model.

``plan`` resolves the model once (the champion by default, so every county of a run uses
the same one) and the counties that have a manifest for the year. The cluster is scaled up
by a setup task and down by its teardown, so it shrinks even when scoring fails. Counties
are mapped, two at a time; each county-year's predictions are committed atomically and
emitted as an Asset (``landuse://predictions/{county}/{year}``) through the
``landuse_predictions`` alias.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, setup, task, teardown

from landuse_airflow import params
from landuse_airflow.assets import PREDICTIONS
from landuse_airflow.errors import fail_fast_on_bad_input


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
        "framework": Param("onnx", type="string", enum=["onnx", "keras", "tflite"],
                           title="Inference framework"),
        "batch_size": Param(32, type="integer", minimum=1, maximum=1024, title="Batch size"),
        "spark_master": Param("local[2]", type="string", title="Spark master",
                              description="local[N], or spark://host:port of a cluster."),
        "spark_master_web_url": Param("http://127.0.0.1:8081", type="string",
                                      title="Standalone master web UI",
                                      description="Where the standalone backend counts "
                                      "workers (8080 is Airflow's API server here)."),
        "cluster_backend": Param("none", type="string",
                                 enum=["none", "standalone", "hdinsight", "databricks"],
                                 title="Cluster backend"),
        "target_workers": Param(2, type="integer", minimum=0, maximum=1000,
                                title="Workers while scoring"),
        "idle_workers": Param(0, type="integer", minimum=0, title="Workers after scoring"),
        "cluster_conn_id": Param(None, type=["null", "string"], title="Cluster connection",
                                 description="Airflow connection with the cloud cluster's "
                                 "settings and credentials (HDInsight, Databricks)."),
        "scale_timeout_s": Param(600, type="integer", minimum=1, title="Scaling timeout (s)"),
        "storage_root": params.storage_root(),
    },
)
def landuse_scoring() -> None:
    @task
    def plan() -> list[dict[str, Any]]:
        """The model and the county-years to score, resolved once for the whole run."""
        from landuse import storage
        from landuse_airflow.stages import resolve_model

        p = get_current_context()["params"]
        root, year = p["storage_root"], p["year"]
        with fail_fast_on_bad_input():
            bundle, model_id = resolve_model(p["model"], root)
            counties = p["counties"] or sorted(
                url.rsplit("/", 3)[-3]
                for url in storage.glob(storage.join(root, "naip", "*", str(year),
                                                     "manifest.parquet"))
            )
            missing = [c for c in counties if not storage.exists(_manifest(root, c, year))]
            if missing or not counties:
                raise ValueError(f"no manifests for {missing or 'any county'} in {year} under "
                                 f"{root}: run naip_dataset first")
        return [{"county": c, "bundle": bundle, "model_id": model_id} for c in counties]

    @setup
    @task
    def scale_up() -> None:
        """Ask for the target size. Waiting is a separate task, so that a cluster that never
        gets there fails the run *after* this setup succeeded, and the teardown still runs."""
        p = get_current_context()["params"]
        if _local_standalone(p):  # a master on this machine: start it (reused when running)
            from urllib.parse import urlparse

            from landuse.cluster.standalone import start_master

            start_master(port=urlparse(p["spark_master"]).port or 7077,
                         webui_port=urlparse(p["spark_master_web_url"]).port or 8081)
        _scaler(p).request(p["target_workers"])

    @task
    def wait_for_workers() -> None:
        """Wait until the target number of workers has registered (clear error on timeout)."""
        from airflow.sdk.exceptions import AirflowFailException

        from landuse.cluster import ClusterTimeout

        p = get_current_context()["params"]
        try:
            _scaler(p).wait(p["target_workers"], timeout_s=p["scale_timeout_s"], poll_s=5)
        except ClusterTimeout as err:  # the wait already spent its patience: do not retry
            raise AirflowFailException(str(err)) from err

    @task(max_active_tis_per_dagrun=2, outlets=[PREDICTIONS])
    def score_county(planned: dict[str, Any]) -> dict[str, Any]:
        """Score one county-year on Spark and publish its predictions Asset."""
        from landuse_airflow.stages import score_and_publish

        context = get_current_context()
        p = context["params"]
        summary = score_and_publish(
            context, planned["county"], p["year"], planned["bundle"], root=p["storage_root"],
            master=p["spark_master"], framework=p["framework"], batch_size=p["batch_size"])
        return {**summary, "model_id": planned["model_id"]}

    @teardown
    @task
    def scale_down() -> None:
        """Shrink the cluster back, whatever happened to scoring."""
        p = get_current_context()["params"]
        scaler = _scaler(p)
        scaler.request(p["idle_workers"])
        scaler.wait(p["idle_workers"], timeout_s=p["scale_timeout_s"], poll_s=5)
        if _local_standalone(p) and p["idle_workers"] == 0:
            from landuse.cluster.standalone import stop_master

            stop_master()

    planned = plan()
    up = scale_up()
    down = scale_down()
    scored = score_county.expand(planned=planned)
    planned >> up >> wait_for_workers() >> scored >> down
    up >> down


def _manifest(root: str, county: str, year: int) -> str:
    from landuse.tiling import manifest_url

    return manifest_url(root, county, year)


def _scaler(p: Any) -> Any:
    """The cluster's scaler: settings and credentials from the connection (cloud backends),
    the standalone master from the Spark master params."""
    from airflow.sdk import BaseHook

    from landuse_airflow.triggers.cluster import build_scaler

    conn = BaseHook.get_connection(p["cluster_conn_id"]) if p["cluster_conn_id"] else None
    options = {}
    if p["cluster_backend"] == "standalone":
        options = {"master_url": p["spark_master"], "master_web_url": p["spark_master_web_url"]}
    return build_scaler(p["cluster_backend"], options, conn)


def _local_standalone(p: Any) -> bool:
    return bool(p["cluster_backend"] == "standalone"
                and p["spark_master"].startswith("spark://127.0.0.1:"))


landuse_scoring()
