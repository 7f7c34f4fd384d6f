"""The Land use view's app without a server: which waiting review tasks belong to a report,
and one row per report of a run."""

from __future__ import annotations

from landuse_airflow.views.view_app import matching_reviews


def _task(subject: str, task_id: str = "review") -> dict[str, object]:
    return {"dag_id": "change_detection", "run_id": "manual__1", "task_id": task_id,
            "map_index": 0, "subject": subject}


def test_a_waiting_review_task_is_found_by_its_subject():
    tasks = [_task("Review synthetic-county-1 2010-2016", "a"),
             _task("synthetic-county-1 2010-2016: review the change report", "b"),
             _task("Review synthetic-county-11 2010-2016", "c"),
             _task("Review my-synthetic-county-1 2010-2016", "d"),
             _task("Review synthetic-county-1 2010-2019", "e"),
             _task("Review synthetic-county-1 2010-20160", "f"),
             {**_task("", "g"), "subject": None}]
    found = matching_reviews(tasks, "synthetic-county-1", "2010-2016")
    assert [t["task_id"] for t in found] == ["a", "b"]
    assert matching_reviews(tasks, "synthetic-county-2", "2010-2016") == []



def test_a_reviewed_report_is_one_row_of_its_run_with_the_review(tmp_path):
    from landuse.change import change_url
    from landuse_airflow.views.view_app import _change_reports

    root = str(tmp_path)
    url = change_url(root, "c", 2010, 2016)
    published = {"county": "c", "year_a": 2010, "year_b": 2016, "url": url,
                 "newly_developed": 7, "tiles": 100}
    reviewed = {**published, "review": {"status": "reviewed", "confirmed": 3}}
    out: dict = {"reports": [], "elsewhere": 0}
    _change_reports(out, [published, reviewed], root)
    assert out["reports"] == [{"county": "c", "year_a": 2010, "year_b": 2016,
                               "pair": "2010-2016", "newly_developed": 7, "tiles": 100,
                               "review": {"status": "reviewed", "confirmed": 3}}]
