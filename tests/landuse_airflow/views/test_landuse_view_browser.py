"""The Land use view end to end: a change_detection and a landuse_scoring run made by
``dag.test()`` (``airflow dags test``, side by side), a landuse_training run whose candidates
the library's tracking code logged to MLflow, the API server on loopback with the plugin,
and headless Chromium (Debian's ``chromium``, installed by scripts/setup.sh) driven by
Playwright through the real login.

Also checks the endpoints' security with plain HTTP: anonymous 401, bad token 403, names
checked, no storage location in what the browser gets; and review mode: who may write an
answer and how, two analysts at once, and the hand-off to a waiting human-in-the-loop task.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from landuse_view_inputs import COUNTY, tile_and_predict, tiny_bundle, track_training

from landuse_airflow.operators.review import PUBLISH, review_request

PROJECT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("LANDUSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DOCS_SCREENSHOT = PROJECT / "docs" / "images" / "landuse-view.png"
PAIR = "2010-2016"
SCORED = "synthetic-county-2"  # scored by the landuse_scoring run; county 1 has the change
TRAINING_RUN = "manual__landuse-view-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """The API server with the plugin, the run it shows and where its outputs are."""

    url: str
    root: Path
    run_id: str
    passwords: dict[str, str]
    scoring_run_id: str
    training_run_id: str
    env: dict[str, str]

    @property
    def password(self) -> str:
        """The admin's password."""
        return self.passwords["admin"]

    def token(self, user: str = "admin") -> str:
        r = requests.post(f"{self.url}/auth/token", timeout=30,
                          json={"username": user, "password": self.passwords[user]})
        r.raise_for_status()
        return str(r.json()["access_token"])

    def bearer(self, user: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}


def _airflow(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run([str(BIN / "airflow"), *args], env=env, timeout=timeout,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class _Running:
    """An ``airflow`` command running in the background, its output in ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def finish(self, timeout: float = 600) -> None:
        if self.proc.wait(timeout=timeout):
            raise RuntimeError(f"{' '.join(map(str, self.proc.args))} failed:\n"
                               f"{self.log.read_text()[-3000:]}")


def _start_airflow(env: dict[str, str], log: Path, *args: str) -> _Running:
    with open(log, "wb") as out:  # the child keeps its own handle
        proc = subprocess.Popen([str(BIN / "airflow"), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return _Running(proc, log)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("landuse-view")
    root = home / "output"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "landuse_airflow.sqlite.CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "landuse_airflow.sqlite.CONNECT_ARGS",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # A reader only, and an analyst who may edit runs (and so answer reviews).
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer,analyst:user",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        # The plugins, then whatever the tests run with (a worktree's include/ before the
        # venv's editable install).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT / "plugins"),
                                                    os.environ.get("PYTHONPATH")])),
        "LANDUSE_STORAGE_ROOT": str(root),
        "LANDUSE_VIEW_CACHE": str(home / "view-cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "NO_PROXY": "127.0.0.1,localhost",
    })
    tile_and_predict(str(root), synthetic)
    from landuse import counties
    from landuse.tiling import TilingConfig, build_county

    registry = synthetic / "counties.json"
    build_county(counties.load_registry(str(registry))[SCORED], [2016], str(root),
                 TilingConfig(tile_px=64))
    bundle = tiny_bundle(home / "bundles", "tiny", seed=0)
    _airflow(env, "db", "migrate")
    # Every DAG and the bundle row in the DB first, so that the two runs below race for none.
    _airflow(env, "dags", "reserialize")
    conf = {"counties": [COUNTY], "year_b": 2016, "registry": str(registry),
            "storage_root": str(root), "embeddings": True,
            "review": "off"}  # a manual run would otherwise wait for an analyst
    scoring = {"counties": [SCORED], "year": 2016, "model": str(bundle),
               "storage_root": str(root), "spark_master": "local[1]"}
    # The API server starts while the two runs (different counties) run side by side.
    log = open(home / "api-server.log", "ab")
    proc = subprocess.Popen([str(BIN / "airflow"), "api-server"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dag_tests = [_start_airflow(env, home / "change.log", "dags", "test",
                                    "change_detection", "--conf", json.dumps(conf)),
                     _start_airflow(env, home / "scoring.log", "dags", "test",
                                    "landuse_scoring", "--conf", json.dumps(scoring))]
        try:
            with pytest.MonkeyPatch.context() as mp:  # the server's MLflow store
                mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
                track_training(str(root), TRAINING_RUN, home / "training")
        finally:
            for running in dag_tests:
                running.finish()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/api/v2/version", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((home / "api-server.log").read_text()[-3000:])
            time.sleep(2)
        passwords = json.loads((home / "simple_auth_manager_passwords.json.generated")
                               .read_text())
        server = Server(url, root, "", passwords, "", TRAINING_RUN, env)
        headers = {"Authorization": f"Bearer {server.token()}"}
        for dag_id in ("change_detection", "landuse_scoring"):
            listed = requests.get(f"{url}/api/v2/dags/{dag_id}/dagRuns", headers=headers,
                                  timeout=60).json()["dag_runs"]
            assert [r["state"] for r in listed] == ["success"], listed
            if dag_id == "change_detection":
                server.run_id = listed[0]["dag_run_id"]
            else:
                server.scoring_run_id = listed[0]["dag_run_id"]
        # The training run's own record: a run of the real DAG, queued (its candidates,
        # above, stand in for what its tasks would have trained).
        queued = requests.post(f"{url}/api/v2/dags/landuse_training/dagRuns", headers=headers,
                               json={"dag_run_id": TRAINING_RUN, "logical_date": None},
                               timeout=60)
        assert queued.ok, queued.text
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def test_every_endpoint_needs_an_airflow_user(server: Server):
    base = f"{server.url}/landuse"
    paths = ["/", f"/runs/change_detection/{server.run_id}", f"/change/{COUNTY}/2010-2016",
             f"/review/{COUNTY}/{PAIR}", f"/api/change/{COUNTY}/{PAIR}/review", "/api/token",
             "/static/landuse.js", "/vendor/leaflet/leaflet.js", "/api/reports",
             f"/api/runs/change_detection/{server.run_id}", f"/api/change/{COUNTY}/2010-2016",
             f"/api/change/{COUNTY}/2010-2016/files/report.md",
             f"/api/change/{COUNTY}/2010-2016/layers/change.png"]
    for path in paths:
        anonymous = requests.get(base + path, timeout=30)
        assert anonymous.status_code == 401, (path, anonymous.status_code)
        forged = requests.get(base + path, timeout=30, headers={"Authorization": "Bearer x.y.z"})
        assert forged.status_code in (401, 403), (path, forged.status_code)
        cookie = requests.get(base + path, timeout=30, cookies={"_token": "x.y.z"})
        assert cookie.status_code in (401, 403), (path, cookie.status_code)
    signed_in = requests.get(base + "/api/reports", timeout=30,
                             headers={"Authorization": f"Bearer {server.token()}"})
    assert signed_in.ok and signed_in.json()["reports"][0]["county"] == COUNTY


def test_names_are_checked_and_no_location_reaches_the_browser(server: Server):
    headers = {"Authorization": f"Bearer {server.token()}"}
    api = f"{server.url}/landuse/api/change"
    for path, statuses in [
        ("/..%2F..%2Fnaip/2010-2016", {400, 404}), ("/Synthetic/2010-2016", {400}),
        (f"/{COUNTY}/2016-2010", {400}), (f"/{COUNTY}/2010-2016/files/..%2F..%2Fsummary.json",
                                          {404}),
        (f"/{COUNTY}/2010-2016/files/%2Fetc%2Fpasswd", {404}),
        (f"/{COUNTY}/2010-2016/layers/..%2Fchange.png", {404}),
        (f"/{COUNTY}/2010-2016/tiles/..%2F..%2Fx/a.png", {404}),
        (f"/{COUNTY}/2010-2016/basemap/7.webp", {404}),
        ("/synthetic-county-2/2010-2016", {404}),  # a valid name without a report
    ]:
        r = requests.get(api + path, headers=headers, timeout=30)
        assert r.status_code in statuses, (path, r.status_code, r.text)
        assert str(server.root) not in r.text
    view = requests.get(f"{api}/{COUNTY}/2010-2016", headers=headers, timeout=60)
    assert view.ok
    body = view.text
    assert str(server.root) not in body and "://" not in body
    assert "AccountKey" not in body and "connection_string" not in body.lower()
    assert view.headers["Content-Security-Policy"].startswith("default-src 'self'")


def _log_in(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/auth/login")  # the simple auth manager's login form
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)


def _all_loaded(page: Any, selector: str, timeout: float = 60_000) -> None:
    """Wait until every image matching ``selector`` in the view's frame has loaded."""
    page.wait_for_function(
        """(sel) => { const d = document.querySelector("iframe[title='Land use']")
               .contentDocument; const imgs = [...d.querySelectorAll(sel)];
               return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=selector, timeout=timeout)


def _screenshot(page: Any, shot: Path) -> None:
    """Save a screenshot; ``LANDUSE_UPDATE_DOCS_SCREENSHOT=1`` also refreshes docs/images."""
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("LANDUSE_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT.parent / shot.name)


def test_scoring_and_training_endpoints_are_guarded_and_checked(server: Server):
    base = f"{server.url}/landuse"
    guarded = [f"/runs/landuse_scoring/{server.scoring_run_id}",
               f"/api/runs/landuse_scoring/{server.scoring_run_id}",
               f"/api/runs/landuse_training/{server.training_run_id}",
               f"/api/scoring/{SCORED}/2016", f"/api/scoring/{SCORED}/2016/layers/classes.png",
               f"/api/scoring/{SCORED}/2016/basemap/0.webp",
               f"/api/training/{server.training_run_id}/candidates/{'0' * 32}/confusion.png"]
    for path in guarded:
        assert requests.get(base + path, timeout=30).status_code == 401, path
        forged = requests.get(base + path, timeout=30, cookies={"_token": "x.y.z"})
        assert forged.status_code in (401, 403), (path, forged.status_code)

    headers = {"Authorization": f"Bearer {server.token()}"}
    scored = requests.get(f"{base}/api/runs/landuse_scoring/{server.scoring_run_id}",
                          headers=headers, timeout=60).json()
    assert scored["kind"] == "scoring" and scored["elsewhere"] == 0
    [county_year] = scored["scored"]
    assert (county_year["county"], county_year["year"]) == (SCORED, 2016)
    assert county_year["tiles"] > 0
    view = requests.get(f"{base}/api/scoring/{SCORED}/2016", headers=headers, timeout=60)
    assert view.ok and view.json()["tiles"] == county_year["tiles"]
    training = requests.get(f"{base}/api/runs/landuse_training/{server.training_run_id}",
                            headers=headers, timeout=60)
    candidates = training.json()["training"]["candidates"]
    assert {c["name"] for c in candidates} == {"squeezenet-head", "squeezenet-logreg"}
    for body in (scored, view.text, training.text):
        text = json.dumps(body) if isinstance(body, dict) else body
        assert str(server.root) not in text and "://" not in text
        assert "mlflow.db" not in text
    mlflow_id = candidates[0]["mlflow_run_id"]
    for path, statuses in [
        ("/api/scoring/..%2F..%2Fnaip/2016", {400, 404}), (f"/api/scoring/{SCORED}/16", {400}),
        (f"/api/scoring/{SCORED}/2010", {404}), (f"/api/scoring/{SCORED}/2016/layers/"
                                                  "..%2Fclasses.png", {404}),
        (f"/api/scoring/{SCORED}/2016/basemap/9.webp", {404}),
        (f"/api/training/{server.training_run_id}/candidates/..%2F{mlflow_id}/confusion.png",
         {404}),
        (f"/api/training/manual__other/candidates/{mlflow_id}/confusion.png", {404}),
    ]:
        r = requests.get(base + path, headers=headers, timeout=30)
        assert r.status_code in statuses, (path, r.status_code, r.text)
        assert str(server.root) not in r.text
    confusion = requests.get(f"{base}/api/training/{server.training_run_id}/candidates/"
                             f"{mlflow_id}/confusion.png", headers=headers, timeout=60)
    assert confusion.ok and confusion.content.startswith(b"\x89PNG")


def test_the_scoring_and_training_views_in_chromium(server: Server, tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run scripts/setup.sh")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            _log_in(page, server)
            page.goto(f"{server.url}/dags/landuse_scoring/runs/{server.scoring_run_id}"
                      "/plugin/landuse-run")
            frame = page.frame_locator("iframe[title='Land use']")
            expect(frame.locator("h1")).to_contain_text(f"{SCORED} 2016", timeout=90_000)
            _all_loaded(page, "img.landuse-layer-classes, img.landuse-basemap")
            shares = frame.locator("table.shares tbody tr")
            expect(shares.first).to_be_visible()
            assert shares.count() >= 1
            expect(frame.locator("#legend")).to_contain_text("Predicted classes 2016")
            _screenshot(page, tmp_path / "landuse-scoring-view.png")

            page.goto(f"{server.url}/dags/landuse_training/runs/{server.training_run_id}"
                      "/plugin/landuse-run")
            frame = page.frame_locator("iframe[title='Land use']")
            expect(frame.locator("table").first).to_contain_text("squeezenet-logreg",
                                                                 timeout=90_000)
            expect(frame.locator(".decision")).to_contain_text("first")
            expect(frame.locator("table.confusion-table")).to_be_visible()
            expect(frame.locator("img.confusion")).to_have_count(2)
            _all_loaded(page, "img.confusion")
            _screenshot(page, tmp_path / "landuse-training-view.png")
        finally:
            browser.close()


def test_the_change_view_in_chromium(server: Server, tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run scripts/setup.sh")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1350})
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            _log_in(page, server)

            page.goto(f"{server.url}/dags/change_detection/runs/{server.run_id}/plugin/landuse-run")
            frame = page.frame_locator("iframe[title='Land use']")
            change = frame.locator("img.landuse-layer-change")
            expect(change).to_be_visible(timeout=90_000)
            page.wait_for_function(  # the change layer and the NAIP quicklook have loaded
                """() => { const d = document.querySelector("iframe[title='Land use']")
                       .contentDocument; const imgs = [...d.querySelectorAll(
                       "img.landuse-layer-change, img.landuse-basemap")];
                       return imgs.length >= 2 && imgs.every(i => i.complete
                       && i.naturalWidth > 0); }""", timeout=90_000)
            expect(frame.locator("#legend")).to_contain_text("newly developed")
            expect(frame.locator("aside table").first).to_contain_text("Developed")
            expect(frame.locator("img.figure[alt='comparison.png']")).to_be_visible()
            expect(frame.locator("a[download='tiles.parquet']")).to_be_visible()

            frame.locator("path.landuse-cell[stroke='#d00000']").first.click()
            panel = frame.locator("#tile-panel")
            expect(panel.locator(".prob-row").first).to_be_visible(timeout=30_000)
            expect(panel).to_contain_text("2016 Developed")
            expect(panel).to_contain_text("embedding_distance")
            images = panel.locator("img.tile-image")
            expect(images).to_have_count(2)
            page.wait_for_function(
                """() => [...document.querySelector("iframe[title='Land use']").contentDocument
                       .querySelectorAll("#tile-panel img.tile-image")]
                       .every(i => i.complete && i.naturalWidth === 64)""", timeout=30_000)
            shot = tmp_path / "landuse-view.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
            if os.environ.get("LANDUSE_UPDATE_DOCS_SCREENSHOT") == "1":
                DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, DOCS_SCREENSHOT)
            outside = [u for u in requested if not u.startswith(("data:", "blob:", server.url))]
            assert not outside, f"the view fetched from elsewhere: {outside}"
        finally:
            browser.close()


# --- review mode ----------------------------------------------------------------------------

PARK_REVIEW = """
import json, sys
from sqlalchemy import select
from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

run_id, subject, option = sys.argv[1:]
with create_session() as session:
    taken = select(HITLDetail.ti_id)
    ti = session.scalars(select(TaskInstance).where(
        TaskInstance.dag_id == "change_detection", TaskInstance.run_id == run_id,
        TaskInstance.id.not_in(taken)).order_by(TaskInstance.task_id)).first()
    ti.state = TaskInstanceState.AWAITING_INPUT
    session.add(HITLDetail(ti_id=ti.id, options=[option, "Leave it unreviewed"], subject=subject,
                           body="Review the flagged tiles", params={}, multiple=False))
    print(json.dumps({"task_id": ti.task_id, "map_index": ti.map_index}))
"""


def _park_review_task(server: Server, subject: str) -> dict[str, Any]:
    """Park one more task of the change_detection run as a human-in-the-loop task waiting
    for input, as the DAG's HITLOperator does, with ``subject``; returns its task id and
    map index."""
    done = subprocess.run([sys.executable, "-c", PARK_REVIEW, server.run_id, subject, PUBLISH],
                          env=server.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _subject(pair: str = PAIR) -> str:
    """The subject the DAG gives the review task of this county and pair."""
    year_a, year_b = pair.split("-")
    return review_request({"county": COUNTY, "year_a": year_a, "year_b": year_b},
                          waiting=1, flagged=1)["subject"]


def _answers(server: Server) -> Any:
    """Every answer stored on the report, read by the library."""
    from landuse import review
    from landuse.change.run import change_url

    return review.read_answers(change_url(str(server.root), COUNTY, 2010, 2016))


def test_only_an_editor_with_a_bearer_token_from_this_origin_writes_a_review(server: Server):
    api = f"{server.url}/landuse/api/change/{COUNTY}/{PAIR}"
    queue = requests.get(f"{api}/review", headers=server.bearer("viewer"), timeout=60).json()
    assert queue["user"] == "viewer" and queue["can_write"] is False
    tile_id = queue["queue"][0]["tile_id"]
    body = {"tile_id": tile_id, "answer": "change"}
    before = len(_answers(server))
    admin = server.token()
    for kwargs, statuses in [
        ({}, {401}),  # anonymous
        ({"headers": {"Authorization": "Bearer x.y.z"}}, {401, 403}),
        ({"cookies": {"_token": "x.y.z"}}, {401, 403}),
        ({"headers": server.bearer("viewer")}, {403}),  # may read, not edit
        ({"cookies": {"_token": admin}}, {401}),  # the session cookie alone
        ({"headers": {"Authorization": f"Bearer {admin}", "Origin": "http://evil.example"}},
         {403}),
    ]:
        r = requests.post(f"{api}/reviews", json=body, timeout=30, **kwargs)
        assert r.status_code in statuses, (kwargs, r.status_code, r.text)
        if kwargs.get("cookies", {}).get("_token") == admin:
            assert "Authorization: Bearer" in r.json()["detail"]
    # What a cross-site form can send: the cookie, a form body, no header.
    form = requests.post(f"{api}/reviews", data={"tile_id": tile_id, "answer": "change"},
                         cookies={"_token": admin}, timeout=30)
    assert form.status_code == 401, form.text
    assert "Authorization: Bearer" in form.json()["detail"]
    assert len(_answers(server)) == before, "a refused request wrote nothing"

    headers = {"Authorization": f"Bearer {admin}", "Origin": server.url}
    for bad, message in [({"tile_id": "32614_99999_99999"}, "not in this report"),
                         ({"tile_id": "..%2Fx"}, "not a tile id"),
                         ({"answer": "maybe"}, "answer 'maybe'"),
                         ({"class_b": "Lava"}, "class of year B")]:
        r = requests.post(f"{api}/reviews", json={**body, **bad}, headers=headers, timeout=30)
        assert r.status_code == 400 and message in r.json()["detail"], (bad, r.text)
    stored = requests.post(f"{api}/reviews", json={**body, "class_a": "Cultivated"},
                           headers=headers, timeout=30)
    assert stored.status_code == 201, stored.text
    assert stored.json()["user"] == "admin" and stored.json()["class_a"] == "Cultivated"
    assert str(server.root) not in stored.text
    answers = _answers(server)
    assert len(answers) == before + 1
    assert answers.iloc[-1]["model_id"] and answers.iloc[-1]["tile_id"] == tile_id


def test_two_analysts_answering_at_once_lose_nothing(server: Server):
    api = f"{server.url}/landuse/api/change/{COUNTY}/{PAIR}"
    tokens = {"admin": server.bearer("admin"), "analyst": server.bearer("analyst")}
    tiles = [t["tile_id"] for t in requests.get(f"{api}/review", headers=tokens["admin"],
                                                timeout=60).json()["queue"][:8]]
    before = len(_answers(server))

    def post(job: tuple[str, str, str]) -> int:
        user, tile_id, answer = job
        return requests.post(f"{api}/reviews", headers=tokens[user], timeout=60,
                             json={"tile_id": tile_id, "answer": answer}).status_code

    jobs = [(user, t, answer) for t in tiles
            for user, answer in (("admin", "change"), ("analyst", "no_change"))]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, jobs)) == [201] * len(jobs)
    new = _answers(server).iloc[before:]
    assert len(new) == len(jobs)
    assert sorted(zip(new["user"], new["tile_id"], new["answer"], strict=True)) == sorted(jobs)
    view = requests.get(f"{api}/review", headers=tokens["analyst"], timeout=60).json()
    by_id = {t["tile_id"]: t for t in view["queue"]}
    assert all(by_id[t]["answer"]["answer"] == "no_change" for t in tiles)
    assert all(by_id[t]["verdict"] == "unsure" for t in tiles)  # one each way: a tie


def test_a_waiting_review_task_is_listed_for_its_report_only(server: Server):
    parked = _park_review_task(server, _subject())
    other = _park_review_task(server, _subject("2013-2016"))
    view = requests.get(f"{server.url}/landuse/api/change/{COUNTY}/{PAIR}/review",
                        headers=server.bearer("viewer"), timeout=60).json()
    mine = [w for w in view["waiting"] if w["task_id"] == parked["task_id"]]
    assert mine == [{"dag_id": "change_detection", "run_id": server.run_id,
                     "task_id": parked["task_id"], "map_index": parked["map_index"],
                     "subject": _subject()}]
    assert other["task_id"] not in {w["task_id"] for w in view["waiting"]}
    # Answered through Airflow's own API (as the page does), the task no longer waits.
    hitl = (f"{server.url}/api/v2/dags/change_detection/dagRuns/{server.run_id}/taskInstances/"
            f"{parked['task_id']}/{parked['map_index']}/hitlDetails")
    answer = {"chosen_options": [PUBLISH], "params_input": {}}
    assert requests.patch(hitl, json=answer, headers=server.bearer("viewer"),
                          timeout=60).status_code == 403
    answered = requests.patch(hitl, json=answer, headers=server.bearer("analyst"), timeout=60)
    assert answered.ok, answered.text
    view = requests.get(f"{server.url}/landuse/api/change/{COUNTY}/{PAIR}/review",
                        headers=server.bearer("viewer"), timeout=60).json()
    assert parked["task_id"] not in {w["task_id"] for w in view["waiting"]}


def test_review_mode_in_chromium(server: Server, tmp_path: Path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run scripts/setup.sh")
    from playwright.sync_api import expect, sync_playwright

    task = _park_review_task(server, _subject())
    api = f"{server.url}/landuse/api/change/{COUNTY}/{PAIR}"
    before = requests.get(f"{api}/review", headers=server.bearer(), timeout=60).json()
    unanswered = [t["tile_id"] for t in before["queue"] if not t["answer"]]
    assert len(unanswered) >= 4
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            _log_in(page, server)
            page.goto(f"{server.url}/landuse/change/{COUNTY}/{PAIR}")
            page.locator("a.review-link").click()
            page.wait_for_url(f"**/landuse/review/{COUNTY}/{PAIR}")
            progress = page.locator("#review-progress")
            queue = len(before["queue"])
            expect(progress).to_have_text(f"{before['answered']} / {queue} answered",
                                          timeout=60_000)
            expect(page.locator("#review-queue tr.selected")).to_contain_text(unanswered[0])
            page.wait_for_function("() => [...document.querySelectorAll('img.review-image')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            page.wait_for_function(  # the next tiles' images are on their way already
                "(id) => performance.getEntriesByType('resource')"
                ".some(e => e.name.includes(`/tiles/${id}/b.png`))", arg=unanswered[1])
            expect(page.locator("body")).to_contain_text("j / → / ↓")  # the shortcuts

            page.keyboard.press("b")
            page.keyboard.press("b")  # year B's true class: the second class
            expect(page.locator("#class-b")).to_have_value(before["classes"][1])
            page.keyboard.press("1")  # real change
            expect(page.locator("#review-queue tr.selected")).to_contain_text(unanswered[1])
            page.keyboard.press("n")  # no change
            expect(page.locator("#review-queue tr.selected")).to_contain_text(unanswered[2])
            page.keyboard.press("j")
            page.keyboard.press("k")  # next and back again
            expect(page.locator("#review-queue tr.selected")).to_contain_text(unanswered[2])
            page.keyboard.press("3")  # can't tell
            expect(progress).to_have_text(f"{before['answered'] + 3} / {queue} answered")

            after = requests.get(f"{api}/review", headers=server.bearer(), timeout=60).json()
            figures = after["figures"]
            assert figures["answers"] == before["figures"]["answers"] + 3
            expect(page.locator("#review-figures")).to_contain_text(
                f"reviewed {figures['reviewed']}, confirmed {figures['confirmed']}")
            expect(page.locator("#review-figures")).to_contain_text(
                f"{figures['answers']} answers")
            answers = _answers(server)
            mine = answers[answers["user"] == "admin"].tail(3)
            assert list(mine["tile_id"]) == unanswered[:3]
            assert list(mine["answer"]) == ["change", "no_change", "unsure"]
            assert list(mine["class_b"].fillna("-")) == [before["classes"][1], "-", "-"]

            done = page.locator("#review-handoff button.publish")
            expect(done).to_have_count(1)
            _screenshot(page, tmp_path / "landuse-review.png")
            done.click()
            expect(page.locator("#review-handoff .published")).to_be_visible(timeout=30_000)
            outside = [u for u in requested if not u.startswith(("data:", "blob:", server.url))]
            assert not outside, f"the view fetched from elsewhere: {outside}"
        finally:
            browser.close()
    detail = requests.get(
        f"{server.url}/api/v2/dags/change_detection/dagRuns/{server.run_id}/taskInstances/"
        f"{task['task_id']}/{task['map_index']}/hitlDetails", headers=server.bearer(),
        timeout=60)
    assert detail.ok, detail.text
    assert detail.json()["chosen_options"] == [PUBLISH]
    assert detail.json()["responded_by_user"]["name"] == "admin"
