"""The Land use view end to end: a change_detection run made by ``dag.test()`` (``airflow dags
test``), the API server on loopback with the plugin, and headless Chromium (Debian's
``chromium``, installed by scripts/setup.sh) driven by Playwright through the real login.

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

import pytest
import requests
from landuse_view_inputs import COUNTY, tile_and_predict

PROJECT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("LANDUSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DOCS_SCREENSHOT = PROJECT / "docs" / "images" / "landuse-view.png"


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
    _airflow(env, "db", "migrate")
    conf = {"counties": [COUNTY], "year_b": 2016, "registry": str(synthetic / "counties.json"),
            "storage_root": str(root), "embeddings": True}
    _airflow(env, "dags", "test", "change_detection", "--conf", json.dumps(conf))
    runs = json.loads(_airflow(env, "dags", "list-runs", "change_detection", "-o", "json")
                      .strip().splitlines()[-1])
    assert [r["state"] for r in runs] == ["success"], runs
    log = open(home / "api-server.log", "ab")
    proc = subprocess.Popen([str(BIN / "airflow"), "api-server"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
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
        yield Server(url, root, runs[0]["run_id"], passwords["admin"])
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
            page.goto(f"{server.url}/auth/login")  # the simple auth manager's login form
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", server.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)

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
