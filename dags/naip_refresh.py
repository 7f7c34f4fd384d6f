"""naip_refresh: the yearly refresh: new NAIP vintages -> tiles -> predictions -> change.

Runs once a year. ``discover`` lists the NAIP vintages in each county's catalogue (local or
blob) for the configured states and keeps those not processed yet: the years of the run's
data interval, and any older vintage newer than the last processed one (NAIP is often
published late). Each new county-year is tiled (manifest committed atomically), then
scored with the champion on Spark, one county-year at a time across all runs (a backfill's
runs and the scheduled one may overlap; a vintage finished by another run is skipped); its
predictions Asset (``landuse_predictions`` alias)
schedules ``change_detection``, which compares it with the county's previous year.

Backfill over years with ``airflow backfill create --dag-id naip_refresh --from-date
2010-01-01 --to-date 2016-12-31``: each yearly run processes that year's vintages, once.
A manual run processes everything new up to this year; ``years`` forces given years.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from landuse_airflow import params
from landuse_airflow.assets import PREDICTIONS
from landuse_airflow.errors import fail_fast_on_bad_input

log = logging.getLogger(__name__)


@dag(
    dag_id="naip_refresh",
    schedule="@yearly",
    start_date=datetime(2003, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs over consecutive years must see each other's results
    tags=["landuse", "refresh"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "registry": params.registry(),
        "counties": params.counties(),
        "states": Param([], type="array", items={"type": "string", "pattern": "^[a-z]{2}$"},
                        title="States", description="Two-letter codes, e.g. ['nd']; empty: "
                        "every state of the registry."),
        "years": Param([], type="array", items={"type": "integer"}, title="Force years",
                       description="Process these years even if done; empty: discover."),
        "model": Param("champion", type="string", minLength=1, title="Model",
                       description="'champion', or a bundle folder."),
        "tile_size_m": Param(224.0, type="number", minimum=10, title="Tile size (m)",
                             description="Must match the county's earlier years."),
        "tile_px": Param(224, type="integer", minimum=16, title="Tile pixels"),
        "spark_master": Param("local[2]", type="string", title="Spark master"),
        "storage_root": params.storage_root(),
    },
)
def naip_refresh() -> None:
    @task
    def discover() -> list[dict[str, Any]]:
        """County-years to process in this run (empty: nothing new, the rest is skipped)."""
        from landuse import counties
        from landuse.refresh import plan_refresh
        from landuse_airflow.stages import resolve_model

        context = get_current_context()
        p = context["params"]
        with fail_fast_on_bad_input():
            params.check_places(p)  # before anything is read or written
            chosen = counties.select(counties.load_registry(p["registry"]), p["counties"])
            if p["years"]:
                jobs = [{"county": c.name, "year": y} for c in chosen for y in p["years"]]
            else:
                start, end = _interval_years(context)
                jobs = plan_refresh(chosen, p["storage_root"], start, end, p["states"])
            if jobs:  # work to do but no model to do it with: say so now, not per county
                resolve_model(p["model"], p["storage_root"])
        log.info("to process: %s", jobs or "nothing new")
        return jobs

    @task(max_active_tis_per_dag=1, outlets=[PREDICTIONS])
    def process(job: dict[str, Any]) -> dict[str, Any]:
        """Tile one county-year, score it with the model and publish its predictions Asset.

        One at a time across *all* runs of this DAG (backfill runs are not limited by the
        DAG's max_active_runs), and a vintage another run finished meanwhile is skipped.
        """
        from airflow.sdk.exceptions import AirflowSkipException

        from landuse import counties
        from landuse.refresh import processed_vintages
        from landuse.tiling import TilingConfig, build_county
        from landuse_airflow.stages import resolve_model, score_and_publish

        context = get_current_context()
        p = context["params"]
        root, year = p["storage_root"], job["year"]
        if not p["years"] and year in processed_vintages(root, job["county"]):
            raise AirflowSkipException(f"{job['county']} {year} was processed by another run")
        with fail_fast_on_bad_input():
            bundle, _ = resolve_model(p["model"], root)
            county = counties.load_registry(p["registry"])[job["county"]]
            config = TilingConfig(tile_size_m=p["tile_size_m"], tile_px=p["tile_px"])
            build_county(county, [year], root, config)
        return score_and_publish(context, county.name, year, bundle, root=root,
                                 master=p["spark_master"])

    process.expand(job=discover())


def _interval_years(context: Any) -> tuple[int, int]:
    """Years ``[start, end)`` a run covers: its data interval when scheduled or backfilled,
    everything up to this year when triggered by hand."""
    run = context["dag_run"]
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if str(run.run_type).endswith("manual") or start is None or end is None:
        now = datetime.now().year
        return now + 1, now + 1
    return start.year, end.year


naip_refresh()
