"""naip_refresh: the yearly refresh: new NAIP vintages -> tiles -> predictions -> change.

Runs once a year. ``discover`` lists the NAIP vintages in each county's catalogue (local or
blob) for the configured states and keeps those not processed yet: the years of the run's
data interval, and any older vintage newer than the last processed one (NAIP is often
published late). Counties fan out: ``process`` is mapped over batches of counties (one
county per task while they fit in ``[core] max_map_length``, batches beyond), its tasks
run in the ``county_refresh`` pool (its slots, set by ``LANDUSE_REFRESH_POOL_SLOTS`` in
scripts/setup.sh and docker-compose.yaml, bound how many county-years run at once), and
each county's new years are tiled and scored in order, so its change report has the year
before. Each county-year is processed once across all runs (a backfill's runs and the
scheduled one may overlap): it is done under a lease held in storage, and whoever holds
the lease processes it only if storage has no committed predictions for it. Its
predictions Asset (``landuse_predictions`` alias) schedules ``change_detection``.

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

# Bounds how many county-years run at once, across all runs (scripts/setup.sh makes it).
POOL = "county_refresh"


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
        "framework": Param("onnx", type="string", enum=["onnx", "onnx-int8"],
                           title="Model form",
                           description="onnx (fp32) or onnx-int8 (kept in a bundle only "
                           "where it was faster than fp32 and agreed with it on the machine "
                           "that built it; a bundle without it fails in discover, saying "
                           "why). Keep one form across "
                           "a county's years: change detection compares one model's "
                           "predictions with themselves."),
        "tile_size_m": Param(224.0, type="number", minimum=10, title="Tile size (m)",
                             description="Must match the county's earlier years."),
        "tile_px": Param(224, type="integer", minimum=16, title="Tile pixels"),
        "spark_master": Param("local[2]", type="string", title="Spark master"),
        "storage_root": params.storage_root(),
    },
)
def naip_refresh() -> None:
    @task
    def discover() -> list[list[dict[str, Any]]]:
        """Counties with years to process in this run, in batches: at most
        ``[core] max_map_length`` of them (empty: nothing new, the rest is skipped)."""
        from airflow.sdk.configuration import conf

        from landuse import counties
        from landuse.refresh import batches, plan_refresh
        from landuse_airflow.stages import resolve_model

        context = get_current_context()
        p = context["params"]
        with fail_fast_on_bad_input():
            params.check_places(p)  # before anything is read or written
            chosen = counties.select(counties.load_registry(p["registry"]), p["counties"])
            if p["years"]:
                years = sorted(set(p["years"]))
                jobs = [{"county": c.name, "years": years} for c in chosen]
            else:
                start, end = _interval_years(context)
                jobs = plan_refresh(chosen, p["storage_root"], start, end, p["states"])
            if jobs:  # work to do but no model to do it with: say so now, not per county
                resolve_model(p["model"], p["storage_root"], p["framework"])
        planned = batches(jobs, conf.getint("core", "max_map_length"))
        log.info("to process: %d counties in %d tasks: %s", len(jobs), len(planned),
                 jobs or "nothing new")
        return planned

    @task(pool=POOL, outlets=[PREDICTIONS])
    def process(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tile and score each new year of a batch of counties, publishing an Asset per
        county-year; a county-year whose predictions are committed (by another run, or
        before a retry) is skipped. Returns what happened to each county-year."""
        from landuse import counties
        from landuse.refresh import county_year_lease, is_processed
        from landuse.tiling import TilingConfig, build_county
        from landuse_airflow.stages import resolve_model, score_and_publish

        context = get_current_context()
        p, ti = context["params"], context["ti"]
        root = p["storage_root"]
        owner = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}"
        with fail_fast_on_bad_input():
            bundle, _ = resolve_model(p["model"], root, p["framework"])
            registry = counties.load_registry(p["registry"])
            config = TilingConfig(tile_size_m=p["tile_size_m"], tile_px=p["tile_px"])
        done: list[dict[str, Any]] = []
        for job in jobs:
            county = registry[job["county"]]
            for year in job["years"]:
                with county_year_lease(root, county.name, year, owner) as lease:
                    if not p["years"] and is_processed(root, county.name, year):
                        log.info("%s %d: already processed, skipped", county.name, year)
                        lease.record["outcome"] = "skipped"
                        done.append({"county": county.name, "year": year,
                                     "outcome": "skipped"})
                        continue
                    with fail_fast_on_bad_input():
                        build_county(county, [year], root, config)
                    summary = score_and_publish(context, county.name, year, bundle,
                                                root=root, master=p["spark_master"],
                                                framework=p["framework"])
                    lease.record["outcome"] = "processed"
                    done.append({**summary, "outcome": "processed"})
        return done

    process.expand(jobs=discover())


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
