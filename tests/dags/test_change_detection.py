"""change_detection with dag.test(): mapped counties, published reports, clear failures."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from landuse import labels, storage

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def root(tmp_path_factory, synthetic: Path) -> Path:
    """Both synthetic counties tiled for 2010 and 2016, with 'predictions' equal to the NLCD
    labels (so the change found is exactly the labels' change)."""
    from landuse import counties
    from landuse.scoring.predict import PREDICTION_SCHEMA, to_table
    from landuse.scoring.spark import predictions_url
    from landuse.tiling import TilingConfig, build_county

    out = tmp_path_factory.mktemp("change-dag")
    for county in counties.load_registry(str(synthetic / "counties.json")).values():
        for result in build_county(county, [2010, 2016], str(out), TilingConfig(tile_px=64)):
            m = pd.read_parquet(result.manifest_url)
            m = m[m["label"].isin(labels.CLASSES)]
            frame = pd.DataFrame({"tile_id": m["tile_id"], "county": county.name,
                                  "year": result.year, "image_url": m["image_url"],
                                  "label": m["label"], "predicted": m["label"],
                                  "predicted_group": m["label"].map(labels.CLASS_TO_GROUP),
                                  "confidence": 0.9, "model_id": "labels@1", "error": None})
            for c in labels.CLASSES:
                frame[f"p_{c}"] = (m["label"] == c).map({True: 0.9, False: 0.02})
            for name in PREDICTION_SCHEMA.names:
                frame[name] = frame.get(name)
            storage.write_parquet(predictions_url(str(out / "predictions"), county.name,
                                                  result.year), to_table(frame))
    return out


def _run(conf: dict):
    """A manual run (``dag.test()``); it asks for no review unless ``conf`` says so."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "change_detection.py")).get_dag(
        "change_detection")
    return dag.test(run_conf={"review": "off", **conf})


def test_reports_every_county_with_its_planted_change(airflow_db, root: Path, synthetic: Path):
    run = _run({"storage_root": str(root), "registry": str(synthetic / "counties.json"),
                "year_b": 2016, "embeddings": False})
    assert run.state == "success"
    for county in ("synthetic-county-1", "synthetic-county-2"):
        folder = root / "change" / f"county={county}" / "2010-2016"  # year A found by itself
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["reference"] == "predictions"  # the same model scored both years
        planted = summary["planted_change"]
        assert planted["recall"] >= 0.9 and planted["precision"] >= 0.6, planted
        assert (folder / "report.md").read_text().startswith(f"# Land-use change in {county}")


def test_a_year_without_predictions_fails_the_run_and_writes_nothing(airflow_db, root: Path):
    run = _run({"storage_root": str(root), "year_b": 2020, "embeddings": False})
    assert run.state == "failed"
    assert not list((root / "change").glob("county=*/*-2020"))


def test_a_county_with_nothing_earlier_fails_clearly(airflow_db, root: Path):
    from landuse.scoring.spark import predictions_url

    url = predictions_url(str(root / "predictions"), "synthetic-county-1", 2010)
    run = _run({"storage_root": str(root), "counties": ["synthetic-county-1"],
                "year_b": 2010, "embeddings": False})
    assert Path(url).exists() and run.state == "failed"


def test_features_on_spark_and_the_fdr_reach_the_no_change_test(airflow_db, root: Path,
                                                                 synthetic: Path):
    from landuse.change.features import features_url

    run = _run({"storage_root": str(root), "registry": str(synthetic / "counties.json"),
                "counties": ["synthetic-county-2"], "year_b": 2016, "fdr": 0.2,
                "features_master": "local[1]"})
    assert run.state == "success"
    for year in (2010, 2016):  # computed on Spark, committed for later pairs
        assert Path(features_url(str(root), "synthetic-county-2", year)).exists()
    folder = root / "change" / "county=synthetic-county-2" / "2010-2016"
    test = json.loads((folder / "summary.json").read_text())["change_test"]
    assert test["fdr"] == 0.2 and test["expected_false"] == round(0.2 * test["flagged"], 1)
    assert "at FDR 0.2" in (folder / "report.md").read_text()


@pytest.mark.parametrize(("name", "value"), [("fdr", 0), ("fdr", 1), ("fdr", 1.5),
                                             ("features_master", "yarn")])
def test_bad_change_test_params_are_refused(airflow_db, root: Path, name: str, value: object):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError, match=name):
        _run({"storage_root": str(root), "year_b": 2016, name: value})


# --- the review step ------------------------------------------------------------------------


class _Analyst(threading.Thread):
    """Waits (in a thread, while ``dag.test()`` runs) for the run's review tasks, then acts
    as ``act`` says; records what it saw. Airflow's modules are imported first, in the main
    thread: two threads importing them at once can deadlock on the import locks."""

    def __init__(self, act, tasks: int = 1) -> None:
        super().__init__(daemon=True)
        from airflow.models import import_all_models
        from sqlalchemy.orm import configure_mappers

        import_all_models()
        configure_mappers()
        import airflow.api_fastapi.app
        import airflow.jobs.scheduler_job_runner  # noqa: F401
        from fastapi.testclient import TestClient  # noqa: F401

        self.act, self.tasks, self.seen, self.error = act, tasks, [], None

    def waiting(self) -> list[dict]:
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(TI.run_id, TI.task_id, TI.map_index, TI.trigger_timeout,
                       HITLDetail.subject, HITLDetail.body)
                .join(HITLDetail, HITLDetail.ti_id == TI.id)
                .where(TI.dag_id == "change_detection",
                       TI.state == TaskInstanceState.AWAITING_INPUT,
                       HITLDetail.responded_at.is_(None))).all()
        return [r._asdict() for r in rows]

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 600
            while len(waiting := self.waiting()) < self.tasks:
                assert time.monotonic() < deadline, "no review task waited"
                time.sleep(0.5)
            self.seen = waiting
            self.act(waiting)
        except BaseException as err:  # reported by the test, not lost in the thread
            self.error = err


def _api(role: str, user: str):
    """The REST API in-process, and a token of a ``role`` user of the simple auth manager."""
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    client = TestClient(create_app("core"))
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=user, role=role))
    return client, {"Authorization": f"Bearer {token}"}


def _hitl_url(task: dict) -> str:
    return (f"/api/v2/dags/change_detection/dagRuns/{task['run_id']}/taskInstances/"
            f"{task['task_id']}/{task['map_index']}/hitlDetails")


def test_a_manual_run_waits_for_review_then_publishes_its_figures(airflow_db, root: Path,
                                                                  synthetic: Path):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from landuse import review
    from landuse.change.run import change_url

    county = "synthetic-county-1"
    url = change_url(str(root), county, 2010, 2016)
    answered: dict = {}

    def analyst(waiting: list[dict]) -> None:
        summary = json.loads(storage.read_bytes(f"{url}/summary.json"))
        answered["status"] = summary["review"]["status"]
        tiles = pd.read_parquet(f"{url}/tiles.parquet")
        q = review.queue(tiles)
        for i, tile_id in enumerate(q["tile_id"][:5]):
            review.record(url, tiles, user="ana", tile_id=tile_id,
                          answer="change" if i < 3 else "no_change")
        client, viewer = _api("viewer", "vic")
        answered["viewer"] = client.patch(_hitl_url(waiting[0]), headers=viewer, json={
            "chosen_options": ["Publish the review"], "params_input": {}}).status_code
        client, analyst_token = _api("user", "ana")
        r = client.patch(_hitl_url(waiting[0]), headers=analyst_token, json={
            "chosen_options": ["Publish the review"], "params_input": {}})
        answered["analyst"] = r.status_code

    thread = _Analyst(analyst)
    thread.start()
    # No review Param: a manual run asks for one (auto).
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "change_detection.py")).get_dag(
        "change_detection")
    run = dag.test(run_conf={"storage_root": str(root), "counties": [county], "year_b": 2016,
                             "registry": str(synthetic / "counties.json"),
                             "embeddings": False})
    thread.join(timeout=60)
    assert thread.error is None, thread.error
    assert run.state == "success"
    task = thread.seen[0]
    assert task["subject"] == f"Review the change in {county} 2010-2016"
    assert f"/landuse/review/{county}/2010-2016" in task["body"]
    assert answered == {"status": "in review", "viewer": 403, "analyst": 200}
    summary = json.loads(storage.read_bytes(f"{url}/summary.json"))
    r = summary["review"]
    assert (r["status"], r["reviewed"], r["confirmed"]) == ("reviewed", 5, 3)
    assert r["flagged"] == summary["newly_developed"]  # embeddings off: no other flag
    assert r["precision"] == pytest.approx(0.6)
    lo, hi = r["precision_interval"]
    assert lo < 0.6 < hi
    assert "3 confirmed as real change" in storage.read_bytes(f"{url}/report.md").decode()
    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(
            AssetEvent.source_run_id == run.run_id)).all()
    reviewed = [e.extra for e in events if "review" in (e.extra or {})]
    assert len(reviewed) == 1 and reviewed[0]["review"]["confirmed"] == 3
    assert reviewed[0]["reviewed_by"] == "ana"


def test_a_review_nobody_answers_ends_unreviewed(airflow_db, root: Path, synthetic: Path):
    """After ``review_timeout`` the scheduler's sweep (run here by hand: ``dag.test()`` has
    no scheduler) resumes the task with the default, and the report says unreviewed."""
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    from landuse.change.run import change_url

    county = "synthetic-county-2"

    def wait_out(waiting: list[dict]) -> None:
        deadline = waiting[0]["trigger_timeout"]
        while datetime.now(UTC) < deadline.astimezone(UTC):
            time.sleep(0.5)
        SchedulerJobRunner.check_awaiting_input_timeouts(
            SimpleNamespace(log=logging.getLogger("sweep")))

    thread = _Analyst(wait_out)
    thread.start()
    run = _run({"storage_root": str(root), "counties": [county], "year_b": 2016,
                "registry": str(synthetic / "counties.json"), "embeddings": False,
                "review": "ask", "review_timeout": 3 / 86400})  # three seconds
    thread.join(timeout=60)
    assert thread.error is None, thread.error
    assert run.state == "success"
    summary = json.loads(storage.read_bytes(
        f"{change_url(str(root), county, 2010, 2016)}/summary.json"))
    assert summary["review"]["status"] == "unreviewed"
    assert summary["review"]["reviewed"] == 0


@pytest.mark.parametrize(("wanted", "run_type", "asks"), [
    ("auto", "manual", True), ("auto", "scheduled", False), ("auto", "asset_triggered", False),
    ("ask", "asset_triggered", True), ("off", "manual", False)])
def test_auto_review_asks_on_manual_runs_only(wanted: str, run_type: str, asks: bool):
    import importlib.util

    from airflow.utils.types import DagRunType

    spec = importlib.util.spec_from_file_location("change_dag", PROJECT / "dags" /
                                                  "change_detection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    context = {"params": {"review": wanted},
               "dag_run": SimpleNamespace(run_type=DagRunType(run_type))}
    assert module._reviewing(context) is asks
