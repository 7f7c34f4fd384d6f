"""landuse_scoring: score every tile of each county-year on Spark with the champion model.

``plan`` resolves the model once (the champion by default, so every county of a run uses
the same one) and the counties that have a manifest for the year. The cluster is scaled up
by a setup task and down by its teardown, so it shrinks even when scoring fails. Counties
are mapped, two at a time; each county-year's predictions are committed atomically and
emitted as an Asset (``landuse://predictions/{county}/{year}``) through the
``landuse_predictions`` alias.

Where the cluster is comes from the connection named by ``cluster_conn_id``, never from
the run's conf, so a run cannot send the connection's token to another host: for
``standalone`` a Spark connection (host ``spark://127.0.0.1``, port, extra
``master_web_url``), whose master the counties are then scored on; for ``hdinsight`` and
``databricks`` the connection described in :mod:`landuse_airflow.triggers.cluster`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, dag, get_current_context, setup, task, teardown

from landuse_airflow import params
from landuse_airflow.assets import PREDICTIONS
from landuse_airflow.errors import fail_fast_on_bad_input

if TYPE_CHECKING:
    from landuse.cluster import ClusterScaler
    from landuse.cluster.standalone import StandaloneCluster


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
        """The model and the county-years to score, resolved once for the whole run."""
        from landuse import storage
        from landuse_airflow.stages import resolve_model

        p = get_current_context()["params"]
        root, year = p["storage_root"], p["year"]
        with fail_fast_on_bad_input():
            params.check_places(p)  # before anything is read or written
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
        with fail_fast_on_bad_input():
            scaler = _scaler(p)
            master = _spark_master(p, scaler)
            if p["spark_master"].startswith("spark://") and p["spark_master"] != master:
                raise ValueError(f"spark_master {p['spark_master']} is not the master of the "
                                 f"cluster connection {p['cluster_conn_id']} ({master}); "
                                 "leave spark_master at its default with the standalone backend")
        local = _local_standalone(scaler)
        if local is not None:  # a master on this machine: start it (reused when running)
            from urllib.parse import urlparse

            from landuse.cluster.standalone import start_master

            start_master(local.work_dir, spark_home=local.spark_home,
                         port=urlparse(local.master_url).port or 7077,
                         webui_port=urlparse(local.master_web_url).port or 8081)
        scaler.request(p["target_workers"])

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
            master=_spark_master(p), framework=p["framework"], batch_size=p["batch_size"])
        return {**summary, "model_id": planned["model_id"]}

    @teardown
    @task
    def scale_down() -> None:
        """Shrink the cluster back, whatever happened to scoring."""
        p = get_current_context()["params"]
        with fail_fast_on_bad_input():
            scaler = _scaler(p)
        scaler.request(p["idle_workers"])
        scaler.wait(p["idle_workers"], timeout_s=p["scale_timeout_s"], poll_s=5)
        local = _local_standalone(scaler)
        if local is not None and p["idle_workers"] == 0:
            from landuse.cluster.standalone import stop_master

            stop_master(local.work_dir)

    planned = plan()
    up = scale_up()
    down = scale_down()
    scored = score_county.expand(planned=planned)
    planned >> up >> wait_for_workers() >> scored >> down
    up >> down


def _manifest(root: str, county: str, year: int) -> str:
    from landuse.tiling import manifest_url

    return manifest_url(root, county, year)


def _scaler(p: Any) -> ClusterScaler:
    """The cluster's scaler, its address, settings and credentials all from the connection
    (never from the run's conf: a run could otherwise send the credentials elsewhere)."""
    from airflow.sdk import BaseHook

    from landuse_airflow.triggers.cluster import build_scaler

    if p["cluster_backend"] == "standalone" and not p["cluster_conn_id"]:
        raise ValueError("the standalone backend needs cluster_conn_id: a Spark connection "
                         "whose host and port are the master (spark://127.0.0.1, 7077) and "
                         "whose extra master_web_url is its web UI")
    conn = BaseHook.get_connection(p["cluster_conn_id"]) if p["cluster_conn_id"] else None
    return build_scaler(p["cluster_backend"], None, conn)


def _spark_master(p: Any, scaler: ClusterScaler | None = None) -> str:
    """Where counties are scored: the standalone connection's master, else ``spark_master``."""
    if p["cluster_backend"] != "standalone":
        return str(p["spark_master"])
    from landuse.cluster.standalone import StandaloneCluster

    scaler = scaler or _scaler(p)
    assert isinstance(scaler, StandaloneCluster)
    return scaler.master_url


def _local_standalone(scaler: ClusterScaler) -> StandaloneCluster | None:
    """The scaler when it is a standalone cluster whose master runs on this machine."""
    from landuse.cluster.standalone import StandaloneCluster

    if isinstance(scaler, StandaloneCluster) and scaler.master_url.startswith(
            "spark://127.0.0.1:"):
        return scaler
    return None


landuse_scoring()
