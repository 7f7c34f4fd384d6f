"""The Land use view end to end: a change_detection and a landuse_scoring run made by
``dag.test()`` (``airflow dags test``, side by side), a landuse_training run whose candidates
the library's tracking code logged to MLflow, the API server on loopback with the plugin,
and headless Chromium (Debian's ``chromium``, installed by scripts/setup.sh) driven by
Playwright through the real login.

Also checks the endpoints' security with plain HTTP: anonymous 401, bad token 403, names
checked, no storage location in what the browser gets.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from landuse_view_inputs import COUNTY, tile_and_predict, tiny_bundle, track_training

PROJECT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("LANDUSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DOCS_SCREENSHOT = PROJECT / "docs" / "images" / "landuse-view.png"
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
    password: str
    scoring_run_id: str
    training_run_id: str

    def token(self) -> str:
        r = requests.post(f"{self.url}/auth/token", timeout=30,
                          json={"username": "admin", "password": self.password})
        r.raise_for_status()
        return str(r.json()["access_token"])


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
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(16),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "PYTHONPATH": str(PROJECT / "plugins"),
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
            "storage_root": str(root), "embeddings": True}
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
        server = Server(url, root, "", passwords["admin"], "", TRAINING_RUN)
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
