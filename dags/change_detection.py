"""change_detection: what changed in each county between two years, as maps and a report.

Scheduled on the scoring predictions Assets (the ``landuse_predictions`` alias): each new
county-year of predictions is compared with the county's latest earlier year: its
predictions by the same model (so that model error largely cancels), else its NLCD labels,
and every count comes with the number expected from model error alone (from the model's
held-out test counties); a county's first year has nothing to be compared with and is
skipped. Manual runs name the counties and years. Each report
(``{root}/change/county={county}/{A}-{B}/``: COG and PNG maps, GeoJSON of changed tiles,
side-by-side figure, report.md, summary.json) is published whole and emitted as an Asset
through the ``landuse_change`` alias.

With ``review`` on (manual runs by default), each compared county then waits for an
analyst: a human-in-the-loop task links to the county's review page in the Land use view,
and once the analyst is done (or after ``review_timeout`` days) the report is published
again with the review's figures (flagged, reviewed, confirmed, precision and the estimated
real change, with 95 % intervals) and a second Asset event that carries them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from landuse_airflow import params
from landuse_airflow.assets import CHANGE_REPORTS, PREDICTIONS, change_asset
from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.operators.review import (
    PUBLISH,
    REVIEW_TIMEOUT_DAYS,
    UNREVIEWED,
    ChangeReviewOperator,
    review_request,
)

log = logging.getLogger(__name__)

@dag(
    dag_id="change_detection",
    schedule=[PREDICTIONS],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["landuse", "change"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "counties": params.counties(),
        "year_a": Param(None, type=["null", "integer"], minimum=2003, maximum=2100,
                        title="Year A (reference)",
                        description="Empty: each county's latest year before year B."),
        "year_b": Param(2016, type="integer", minimum=2003, maximum=2100,
                        title="Year B (predictions)"),
        "reference": Param("auto", type="string", enum=["auto", "labels", "predictions"],
                           title="Reference",
                           description="Year A as predictions of the same model as year B, or "
                           "as NLCD labels (then every model error counts as change); auto: "
                           "same-model predictions where year A has them, else labels."),
        "threshold": Param(0.5, type="number", minimum=0, exclusiveMaximum=1,
                           title="Confidence threshold",
                           description="Predictions whose group probability is lower are "
                           "uncertain and take part in no transition."),
        "smooth": Param(False, type="boolean", title="3x3 plurality smoothing"),
        "centre_weight": Param(2.0, type="number", minimum=1, title="Centre tile weight"),
        "embeddings": Param(True, type="boolean", title="Embedding change (no labels)",
                            description="Rank change by backbone-feature distance, test every "
                            "tile against a no-change null, and check both against water "
                            "change where scenes have NIR."),
        "fdr": Param(0.05, type="number", exclusiveMinimum=0, exclusiveMaximum=1,
                     title="False-discovery rate",
                     description="Of the tiles the no-change test flags, about this share is "
                     "expected to be false (Benjamini-Hochberg)."),
        "features_master": Param(None, type=["null", "string"],
                                 pattern=r"^(local(\[([0-9]+|\*)\])?|spark://.+)$",
                                 title="Spark master for change features",
                                 description="Empty: a county-year's change features (backbone "
                                 "embedding and pixel statistics, computed once and reused by "
                                 "every pair) are computed in the task. local[N] or "
                                 "spark://host:port: on Spark, the executors reading the "
                                 "windows (counties of tens of thousands of tiles)."),
        "review": Param("auto", type="string", enum=["auto", "ask", "off"],
                        title="Review the flagged tiles",
                        description="ask: each compared county waits for an analyst to review "
                        "its flagged tiles in the Land use view before the report is published "
                        "with the review's figures; off: publish without waiting; auto: ask "
                        "for manual runs, off for scheduled ones."),
        "review_timeout": Param(REVIEW_TIMEOUT_DAYS, type="number", exclusiveMinimum=0,
                                maximum=365, title="Review timeout (days)",
                                description="After this long a waiting review ends and the "
                                "report is published as unreviewed."),
        "registry": params.registry(),
        "storage_root": params.storage_root(),
    },
)
def change_detection() -> None:
    @task
    def plan() -> list[list[dict[str, Any]]]:
        """The (county, year A, year B) comparisons of this run, in at most
        ``[core] max_map_length`` batches (one comparison each, while they fit)."""
        from airflow.sdk.configuration import conf

        from landuse import storage
        from landuse.refresh import batches

        context = get_current_context()
        p = context["params"]
        events = [e for evs in context["triggering_asset_events"].values() for e in evs
                  if str(e.asset.uri).startswith("landuse://predictions/")]
        with fail_fast_on_bad_input():
            params.check_places(p)  # before anything is read or written
            if events:  # scheduled: one comparison per new county-year, where possible
                wanted = sorted({(e.extra.get("storage_root") or p["storage_root"],
                                  e.extra["county"], int(e.extra["year"])) for e in events})
            else:
                root = p["storage_root"]
                names = p["counties"] or sorted(
                    u.split("county=", 1)[1].split("/", 1)[0] for u in storage.glob(
                        storage.join(root, "predictions", "county=*", f"year={p['year_b']}",
                                     "predictions.parquet")))
                if not names:
                    raise ValueError(f"no predictions for {p['year_b']} under {root}: score "
                                     "that year first (landuse_scoring)")
                wanted = [(root, name, p["year_b"]) for name in names]
            jobs = []
            for root, county, year_b in wanted:
                year_a = p["year_a"] if not events else None
                if year_a is None:
                    year_a = _previous_year(root, county, year_b)
                if year_a is None:
                    if not events:
                        raise ValueError(f"county {county} has no year before {year_b} to "
                                         "compare with: tile and score one first")
                    log.info("%s %d: the county's first year, nothing to compare", county,
                             year_b)
                    continue
                jobs.append({"root": root, "county": county, "year_a": year_a,
                             "year_b": year_b})
        return batches(jobs, conf.getint("core", "max_map_length"))

    @task(max_active_tis_per_dagrun=2, outlets=[CHANGE_REPORTS])
    def detect(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Detect, map and report the change of a batch of counties (one, while they fit);
        publish each report as an Asset."""
        context = get_current_context()
        return [_detect_one(context, job) for job in jobs]

    @task
    def report(results: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """One line per county in the log: where its report is and the headline figures."""
        flat = [r for batch in results for r in batch]
        for r in flat:
            log.info("%s %d->%d: %d newly developed of %d tiles; report %s/report.md",
                     r["county"], r["year_a"], r["year_b"], r["newly_developed"], r["tiles"],
                     r["url"])
        return flat

    @task
    def ask_for_review(headlines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A review request (the headline with the task's subject and body) per compared
        county, none when ``review`` is off; each report then says it is in review."""
        from airflow.sdk.configuration import conf

        from landuse import review

        if not _reviewing(get_current_context()):
            return []
        base = conf.get("api", "base_url", fallback="") or ""
        pending = []
        for h in headlines:
            tiles = _report_tiles(h["url"])
            flagged = int(review.flag_kinds(tiles).notna().sum())
            review.publish(h["url"], status="in review")
            pending.append({**h, **review_request(h, len(review.queue(tiles)), flagged, base)})
        return pending

    @task(outlets=[CHANGE_REPORTS])
    def publish_review(pending: dict[str, Any]) -> dict[str, Any]:
        """Publish one county's report again with its review's figures, and its Asset
        event."""
        from landuse import review

        context = get_current_context()
        ti = context["ti"]
        answer = ti.xcom_pull(task_ids="review", map_indexes=ti.map_index) or {}
        by = answer.get("responded_by_user") or {}
        chosen = answer.get("chosen_options") or [UNREVIEWED]
        status = "reviewed" if PUBLISH in chosen and by else "unreviewed"
        figures = review.publish(pending["url"], status=status)
        h = {k: v for k, v in pending.items() if k not in ("subject", "body")}
        extra = {**h, "review": {k: figures.get(k) for k in (
            "status", "flagged", "reviewed", "confirmed", "precision", "precision_interval",
            "estimated_real", "estimated_real_interval")},
            "reviewed_by": by.get("name") if isinstance(by, dict) else None}
        context["outlet_events"][CHANGE_REPORTS].add(
            change_asset(h["county"], h["year_a"], h["year_b"]), extra=extra)
        log.info("%s %d->%d: %s, %s of %s flagged tiles reviewed, %s confirmed", h["county"],
                 h["year_a"], h["year_b"], status, figures["reviewed"], figures["flagged"],
                 figures["confirmed"])
        return extra

    pending = ask_for_review(report(detect.expand(jobs=plan())))
    answers = ChangeReviewOperator.partial(task_id="review").expand_kwargs(
        pending.map(_task_text))
    answers >> publish_review.expand(pending=pending)


def _detect_one(context: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Detect, map and report one county's change; add its Asset event; its headline."""
    from landuse import counties
    from landuse.change.run import run_change

    p = context["params"]
    county, year_a, year_b = job["county"], job["year_a"], job["year_b"]
    spark = None
    if p["features_master"] and p["embeddings"]:
        from landuse.spark import local_spark

        spark = local_spark("landuse-change-features", master=p["features_master"])
    with fail_fast_on_bad_input():
        registry = counties.load_registry(p["registry"])
        truth = registry[county].truth if county in registry else None
        result = run_change(job["root"], county, year_a, year_b, reference=p["reference"],
                            threshold=p["threshold"], smooth=p["smooth"],
                            centre_weight=p["centre_weight"], embeddings=p["embeddings"],
                            fdr=p["fdr"], truth=truth, spark=spark)
    s = result.summary
    headline = {
        "county": county, "year_a": year_a, "year_b": year_b, "url": result.url,
        "reference": s["reference"], "tiles": s["tiles"],
        "newly_developed": s["newly_developed"], "changed": s["changed"],
        "expected_from_model_error": s["expected_from_model_error"].get(
            "newly_developed", {}).get("expected"),
        "test_accuracy": s["model"].get("accuracy"),  # on the model's held-out counties
        "label_agreement": s["accuracy"].get(str(year_b), {}).get("accuracy"),
        "planted_recall": s.get("planted_change", {}).get("recall"),
        "planted_precision": s.get("planted_change", {}).get("precision"),
        "water_iou": s.get("embedding_change", {}).get("water", {}).get("iou"),
        "significant": s.get("change_test", {}).get("flagged"),
        "expected_false": s.get("change_test", {}).get("expected_false"),
    }
    context["outlet_events"][CHANGE_REPORTS].add(change_asset(county, year_a, year_b),
                                                 extra=headline)
    return headline


def _reviewing(context: Any) -> bool:
    """Whether this run asks for a review (``auto``: manual runs do)."""
    wanted = context["params"]["review"]
    if wanted == "auto":
        return str(context["dag_run"].run_type).lower().endswith("manual")
    return bool(wanted == "ask")


def _report_tiles(url: str) -> Any:
    from landuse import storage

    return storage.read_parquet(storage.join(url, "tiles.parquet")).to_pandas()


def _task_text(pending: dict[str, Any]) -> dict[str, Any]:
    """A review request's subject and body: the review task's arguments."""
    return {"subject": pending["subject"], "body": pending["body"]}


def _previous_year(root: str, county: str, year_b: int) -> int | None:
    """The county's latest year before ``year_b`` with predictions, else with a manifest
    (labels may serve as the reference)."""
    from landuse import storage

    scored = [int(u.split("year=", 1)[1].split("/", 1)[0]) for u in storage.glob(
        storage.join(root, "predictions", f"county={county}", "year=*", "predictions.parquet"))]
    tiled = [int(u.rsplit("/", 2)[-2]) for u in storage.glob(
        storage.join(root, "naip", county, "*", "manifest.parquet"))]
    for years in (scored, tiled):
        earlier = [y for y in years if y < year_b]
        if earlier:
            return max(earlier)
    return None


change_detection()
