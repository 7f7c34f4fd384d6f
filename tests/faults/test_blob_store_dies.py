"""The blob store dies mid-county: Airflow's retry of ``tile_county`` finishes the job.

``naip_dataset`` runs with ``dag.test()`` in a child process (as a worker would run it)
against an Azurite of this test's own. Once the first county-year has some tiles in the
store but no manifest, Azurite is killed with SIGKILL; the task attempt fails, Airflow puts
it up for retry, Azurite comes back on the same port with the same data folder, and the
retry completes the run. The store comes back holding the failed attempt's tiles: the
writer is frozen with SIGSTOP until Azurite has saved its index, then resumed 50 ms before
the kill (so the kill most likely cuts an upload). Every object left in the store must then
be byte-identical to a clean run of the same DAG inputs on a healthy store (the session's
Azurite, same container and prefix, so the manifests' image URLs are the same strings), and
nothing else may exist.

Two settings of the child process differ from production, both to keep the test short:

* Azure SDK retries: with the SDK's defaults (3 retries, back-off 15 s + 3^n s) a write to
  a dead endpoint takes about 84 s to fail (measured here); the child uses 2 retries after
  1 s and 2 s, so an attempt fails about 3 s after the store dies. adlfs does not pass
  retry options through to the client, so its client factory is wrapped.
* ``tile_county``'s ``retry_delay``: 8 s instead of the DAG's 30 s (``retries=2`` kept).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient
from PIL import Image

from landuse import counties, splits, storage
from landuse.tiling import TilingConfig, build_county

PROJECT = Path(__file__).resolve().parents[2]
COUNTIES = ["synthetic-county-1", "synthetic-county-2"]
YEARS = [2010, 2016]
KILL_AFTER_TILES = 8  # of the first county-year's 36
RETRY_DELAY_S = 8.0
PNG = b"\x89PNG\r\n\x1a\n"

RUNNER = textwrap.dedent(
    """
    import json, sys
    from datetime import timedelta

    import adlfs.spec
    from azure.storage.blob.aio import BlobServiceClient

    def short_retries(connection_string):
        return BlobServiceClient.from_connection_string(
            conn_str=connection_string, user_agent=adlfs.spec._USER_AGENT,
            retry_total=2, initial_backoff=1, increment_base=1, random_jitter_range=0,
            connection_timeout=5, read_timeout=30,
        )

    adlfs.spec._create_aio_blob_service_client_from_connection_string = short_retries

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    dag_file, conf, delay = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    dag = DagBag(dag_folder=dag_file).get_dag("naip_dataset")
    dag.get_task("tile_county").retry_delay = timedelta(seconds=delay)
    run = dag.test(run_conf=conf)
    with create_session() as session:
        tis = [
            {"task_id": t.task_id, "map_index": t.map_index, "state": str(t.state),
             "try_number": t.try_number}
            for t in session.query(TaskInstance).filter_by(run_id=run.run_id)
        ]
    print("RESULT " + json.dumps({"state": str(run.state), "tis": tis}), flush=True)
    """
)


def _airflow_env(home: Path, connection_string: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AZURE_STORAGE_CONNECTION_STRING=connection_string,
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT / "plugins"),
                                                 env.get("PYTHONPATH")])),
    )
    return env


def _container(connection_string: str, name: str) -> Any:
    """A container client that never waits on a dead endpoint (no retries, 2 s connect)."""
    service = BlobServiceClient.from_connection_string(
        connection_string, retry_total=0, connection_timeout=2, read_timeout=10
    )
    return service.get_container_client(name)


def _objects(container: Any) -> dict[str, bytes]:
    return {
        b.name: container.download_blob(b.name).readall() for b in container.list_blobs()
    }


def _reference(connection_string: str, container: str, root: str, registry: Path,
               monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """What naip_dataset writes for the same conf on a healthy store (same container/root)."""
    _container(connection_string, container).create_container()
    with monkeypatch.context() as env:
        env.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
        chosen = counties.load_registry(str(registry))
        manifests = [
            r.manifest_url
            for name in COUNTIES
            for r in build_county(chosen[name], YEARS, root, TilingConfig(chips="all"), nlcd=None)
        ]
        splits.build_dataset(manifests, storage.join(root, "naip", "dataset"))
    return _objects(_container(connection_string, container))


def _persisted(location: Path, timeout_s: float = 6.0) -> float:
    """Wait until Azurite saved its blob and extent indexes after now (LokiJS autosaves every
    5 s when there are changes, by writing a temp file and renaming it; no save within
    ``timeout_s`` means there was nothing to save). Returns the seconds waited."""
    now, started = time.time(), time.monotonic()
    files = [location / "__azurite_db_blob__.json", location / "__azurite_db_blob_extent__.json"]
    while time.monotonic() - started < timeout_s:
        if all(f.exists() and f.stat().st_mtime > now for f in files):
            break
        time.sleep(0.05)
    return time.monotonic() - started


def _tile_tries(db: Path) -> list[tuple[int, str, int]]:
    """(map_index, state, try_number) of the tile_county instances, read-only."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return list(conn.execute(
                "SELECT map_index, state, try_number FROM task_instance "
                "WHERE task_id = 'tile_county' ORDER BY map_index"
            ))
    except sqlite3.OperationalError:  # not migrated yet, or locked for a moment
        return []


def _start_dag_test(conf: dict[str, Any], env: dict[str, str],
                    log: Path) -> subprocess.Popen[bytes]:
    """``naip_dataset`` under ``dag.test()`` in a child process, its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(PROJECT / "dags" / "naip_dataset.py"),
             json.dumps(conf), str(RETRY_DELAY_S)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent,
        )


def _wait(what: str, check: Any, timeout_s: float, job: subprocess.Popen[bytes],
          log: Path, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if job.poll() is not None:
            pytest.fail(f"the DAG run ended before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(poll_s)
    pytest.fail(f"no {what} within {timeout_s:g} s:\n{log.read_text()[-4000:]}")


@pytest.mark.azurite
@pytest.mark.timeout(300)
def test_blob_store_killed_mid_county_then_the_task_retry_completes(
    killable_azurite, azurite, synthetic, tmp_path, monkeypatch, assert_gone
):
    store = killable_azurite
    name = f"faults{time.monotonic_ns()}"
    root = f"abfs://{name}/landuse"
    registry = synthetic / "counties.json"
    conf = {"registry": str(registry), "counties": COUNTIES, "years": YEARS,
            "storage_root": root, "chips": "all"}  # every tile uploaded: a window to kill in
    live = _container(store.connection_string, name)
    live.create_container()

    home = tmp_path / "airflow"
    home.mkdir()
    env = _airflow_env(home, store.connection_string)
    migrate = subprocess.Popen([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:  # the healthy run, meanwhile, on the session's Azurite: same container and root
        reference = _reference(azurite, name, root, registry, monkeypatch)
    finally:
        assert migrate.wait(timeout=120) == 0
    tiles = {n for n in reference if n.endswith(".png")}
    manifests = {n for n in reference if n.endswith("/manifest.parquet")}
    assert len(manifests) == len(COUNTIES) * len(YEARS)

    log = tmp_path / "dag-test.log"
    started = time.monotonic()
    job = _start_dag_test(conf, env, log)
    seen = [psutil.Process(job.pid)]
    try:
        # 1. Wait for the first county-year to be part-written, then kill -9 the store.
        first: dict[str, str] = {}

        def part_written() -> list[str] | None:
            names = [b.name for b in live.list_blobs(name_starts_with="landuse/naip/")]
            if names and not first:
                first["prefix"] = names[0].split("/tiles/")[0]
            ours = [n for n in names if n.startswith(first.get("prefix", "-") + "/")]
            if any(n.endswith("manifest.parquet") for n in ours):
                pytest.fail(f"missed the window: {first['prefix']} was committed before the kill")
            written = [n for n in ours if "/tiles/" in n]
            return written if len(written) >= KILL_AFTER_TILES else None

        _wait("tiles in the store", part_written, 120, job, log)
        parent = psutil.Process(job.pid)
        seen = [parent, *parent.children(recursive=True)]
        # Freeze the writer until Azurite has persisted its index (it saves every 5 s), so
        # the failed attempt's tiles are still there after the restart for the retry to
        # overwrite; without this they would vanish with the unsaved index. Then let it
        # write again and kill the store a moment later, most likely mid-upload.
        os.kill(job.pid, signal.SIGSTOP)
        paused_s = _persisted(store.location)
        written = [b.name for b in live.list_blobs(name_starts_with=first["prefix"] + "/")]
        os.kill(job.pid, signal.SIGCONT)
        time.sleep(0.05)
        store.kill()
        killed_at = time.monotonic()

        # 2. The attempt fails in bounded time and Airflow schedules a retry.
        db = home / "airflow.db"
        tries = _wait("failed tile_county attempt",
                      lambda: [t for t in _tile_tries(db) if t[1] == "up_for_retry"],
                      60, job, log, poll_s=0.2)
        failed_after = time.monotonic() - killed_at

        # 3. The store comes back: same port, same data folder.
        restart_s = store.start()
        outage_s = time.monotonic() - killed_at
        # What the failed attempt left: its tiles, each whole, never the county-year's
        # manifest (read before the retry began, checked below once the run is over).
        left = {b.name: live.download_blob(b.name).readall()
                for b in live.list_blobs(name_starts_with=first["prefix"] + "/")}
        still_waiting = any(t[1] == "up_for_retry" for t in _tile_tries(db))
        assert job.wait(timeout=200) == 0, log.read_text()[-4000:]
        total_s = time.monotonic() - started
    finally:
        if job.poll() is None:
            os.kill(job.pid, signal.SIGCONT)
            job.kill()
            job.wait(timeout=10)
    assert_gone(seen, "DAG run")  # the dag.test process and anything it started

    text = log.read_text()
    result = json.loads(text.rsplit("RESULT ", 1)[1].splitlines()[0])
    assert result["state"] == "success", text[-4000:]
    tile_tis = sorted((t for t in result["tis"] if t["task_id"] == "tile_county"),
                      key=lambda t: t["map_index"])
    assert {t["state"] for t in result["tis"]} == {"success"}
    killed_county = first["prefix"].split("/")[2]
    killed_ti = tile_tis[COUNTIES.index(killed_county)]
    assert killed_ti["try_number"] >= 2  # failed with the store, passed on a retry
    assert all(t["try_number"] <= 3 for t in tile_tis)  # within retries=2
    # The failure named the object and the unreachable store (not a hang, not a bad-input fail).
    assert "StorageUnavailable: cannot write abfs://" in text and f"127.0.0.1:{store.port}" in text

    if still_waiting:  # the store as the retry found it: whole tiles, no manifest
        assert set(written) <= set(left)
        assert f"{first['prefix']}/manifest.parquet" not in left
        assert {n: reference[n] for n in left} == left

    # 4. The store holds exactly what a clean run writes, byte for byte: no partial tile,
    # no leftover, no missing object.
    after = _objects(live)
    assert sorted(after) == sorted(reference)
    different = sorted(n for n in after if after[n] != reference[n])
    assert different == []
    for n in tiles:
        assert after[n].startswith(PNG)
        Image.open(io.BytesIO(after[n])).verify()
    listed = set()
    for n in manifests:
        for row in pq.read_table(io.BytesIO(after[n])).to_pylist():
            if row["image_url"] is not None:
                listed.add(row["image_url"].removeprefix(f"abfs://{name}/"))
    assert listed == tiles  # every manifest row's image exists, and every tile is listed

    figures = {
        "tiles": len(tiles), "manifests": len(manifests), "objects": len(after),
        "killed": first["prefix"], "tiles_at_kill": len(written),
        "tiles_after_restart": len(left) if still_waiting else None,
        "writer_paused_s": round(paused_s, 1),
        "tries": {t["map_index"]: t["try_number"] for t in tile_tis},
        "attempt_failed_after_s": round(failed_after, 1), "restart_s": round(restart_s, 1),
        "outage_s": round(outage_s, 1), "run_s": round(total_s, 1), "up_for_retry": tries,
    }
    print("FIGURES " + json.dumps(figures))


def _upload_tree(folder: Path, container: Any, prefix: str) -> list[str]:
    names = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = f"{prefix}/{path.relative_to(folder).as_posix()}"
        container.upload_blob(name, path.read_bytes(), overwrite=True)
        names.append(name)
    return names


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.azurite
@pytest.mark.timeout(300)
def test_blob_store_killed_while_scenes_are_read_then_the_run_completes(
    killable_azurite, synthetic, tmp_path, monkeypatch, assert_gone
):
    """The scenes and NLCD live on the store (read through GDAL's /vsiaz/ and adlfs), the
    outputs on local disk. The store dies while the first county-year's scene is being
    tiled and comes back a few seconds later: the library's retries ride the outage out
    (Airflow's retries would take over if it lasted longer), nothing is failed as bad
    input, and the outputs are byte-identical to a run on a healthy store."""
    store = killable_azurite
    name = f"scenes{time.monotonic_ns()}"
    live = _container(store.connection_string, name)
    live.create_container()
    uploaded = _upload_tree(synthetic, live, "src")
    _persisted(store.location)  # an unsaved index would forget the scenes at the kill
    registry = f"abfs://{name}/src/counties.json"
    root = tmp_path / "out"
    conf = {"registry": registry, "counties": COUNTIES, "years": YEARS,
            "storage_root": str(root), "chips": "all"}  # a tile written per tile read

    # The healthy run, in this process, to the same root: what the DAG run must leave.
    with monkeypatch.context() as env:
        env.setenv("AZURE_STORAGE_CONNECTION_STRING", store.connection_string)
        chosen = counties.load_registry(registry)
        manifests = [r.manifest_url for c in COUNTIES
                     for r in build_county(chosen[c], YEARS, str(root), TilingConfig(chips="all"))]
        splits.build_dataset(manifests, storage.join(str(root), "naip", "dataset"))
    reference = _local_files(root)
    shutil.rmtree(root)

    home = tmp_path / "airflow"
    home.mkdir()
    env = _airflow_env(home, store.connection_string)
    # Enough library retries (waits 1, 2, 2, 2, ... s plus jitter) to outlast the outage.
    env.update(LANDUSE_STORAGE_RETRIES="12", LANDUSE_STORAGE_RETRY_MAX_WAIT_S="2")
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)
    log = tmp_path / "dag-test.log"
    started = time.monotonic()
    job = _start_dag_test(conf, env, log)
    seen = [psutil.Process(job.pid)]
    try:
        # 1. Once the first county-year has some tiles on disk, freeze the reader, kill -9
        # the store, and let the reader go on against a dead endpoint.
        def part_read() -> list[Path] | None:
            tiles = sorted(root.glob("naip/*/2010/tiles/*.png"))
            return tiles if len(tiles) >= 4 else None

        first = _wait("tiles on disk", part_read, 120, job, log, poll_s=0.02)
        county_year = first[0].parents[1]
        parent = psutil.Process(job.pid)
        seen = [parent, *parent.children(recursive=True)]
        os.kill(job.pid, signal.SIGSTOP)
        store.kill()
        killed_at = time.monotonic()
        os.kill(job.pid, signal.SIGCONT)
        committed_in_outage = (county_year / "manifest.parquet").exists()

        # 2. The store comes back on the same port with the same data after a few seconds.
        time.sleep(4)
        restart_s = store.start()
        outage_s = time.monotonic() - killed_at
        assert job.wait(timeout=200) == 0, log.read_text()[-4000:]
        total_s = time.monotonic() - started
    finally:
        if job.poll() is None:
            os.kill(job.pid, signal.SIGCONT)
            job.kill()
            job.wait(timeout=10)
    assert_gone(seen, "DAG run")

    text = log.read_text()
    result = json.loads(text.rsplit("RESULT ", 1)[1].splitlines()[0])
    assert result["state"] == "success", text[-4000:]
    assert {t["state"] for t in result["tis"]} == {"success"}
    assert "AirflowFailException" not in text  # never taken for bad input
    # The outage was met by reads of the scenes or their metadata, and retried.
    retried = [line for line in text.splitlines() if "storage unavailable (attempt" in line]
    assert retried, text[-4000:]
    assert all(f"abfs://{name}/src/" in line for line in retried)
    assert not committed_in_outage

    # 3. Nothing lost, nothing doubled: the outputs are those of the healthy run.
    after = _local_files(root)
    assert sorted(after) == sorted(reference)
    assert sorted(n for n in after if after[n] != reference[n]) == []
    for manifest in root.glob("naip/*/*/manifest.parquet"):
        table = pq.read_table(manifest).to_pandas()
        assert table["tile_id"].is_unique
        images = {Path(u).name for u in table["image_url"].dropna()}
        assert images == {p.name for p in (manifest.parent / "tiles").iterdir()}

    tile_tis = sorted((t for t in result["tis"] if t["task_id"] == "tile_county"),
                      key=lambda t: t["map_index"])
    figures = {
        "scenes_and_nlcd_on_store": len(uploaded), "killed_during": str(
            county_year.relative_to(root)), "tiles_at_kill": len(first),
        "outage_s": round(outage_s, 1), "restart_s": round(restart_s, 1),
        "library_retries": len(retried), "first_retry": retried[0][-200:],
        "tries": {t["map_index"]: t["try_number"] for t in tile_tis},
        "run_s": round(total_s, 1), "files": len(after),
    }
    print("FIGURES " + json.dumps(figures))
