"""Spark standalone scaling against a real master and real worker JVMs on loopback.

One master serves the file (free ports, its own work folder). Workers are 1 core / 512m.
The Spark job and one scale-down run in child processes, as they would in Airflow: the
job as a task's driver, the scale-down as a later task that only has the work folder's
state file to find the workers another process started. Further tests cover where that
state lives by default (a shared folder, not ``/tmp``), entries from another host or from
before a reboot, and that every port the daemons open is on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from landuse import config
from landuse.cluster import ClusterError, ClusterTimeout, make_scaler
from landuse.cluster.standalone import (
    MASTER_CLASS,
    WORKER_CLASS,
    SparkMaster,
    StandaloneCluster,
    _is_daemon,
    default_work_dir,
    find_spark_home,
    free_port,
    start_master,
    stop_master,
    this_host,
)

WAIT_S = 60.0  # a worker JVM registers in ~5 s here; the bound only matters on failure
POLL_S = 0.3


@dataclass(frozen=True)
class Standalone:
    master: SparkMaster
    work_dir: Path

    def scaler(self, **options: Any) -> StandaloneCluster:
        options.setdefault("work_dir", self.work_dir)
        return StandaloneCluster(
            self.master.url, self.master.web_url, cores_per_worker=1,
            memory_per_worker="512m", **options,
        )

    def alive_workers(self) -> list[dict[str, Any]]:
        """ALIVE workers as the master's JSON lists them (read here, not via the scaler)."""
        info = requests.get(f"{self.master.web_url}/json/", timeout=5).json()
        return [w for w in info["workers"] if w["state"] == "ALIVE"]


def test_a_starting_worker_is_recognised_while_spark_class_execs_java() -> None:
    """spark-class execs env, bash, then java; in between, /proc/PID/cmdline reads empty
    (measured: about 1 read in 2,500 during the first second). A worker must never be
    taken for another program then: that dropped it from the state file and started a
    third worker for a target of two."""
    port = free_port()
    proc = subprocess.Popen(
        [str(find_spark_home() / "bin" / "spark-class"), WORKER_CLASS, "--host", "127.0.0.1",
         "--port", str(port), "--webui-port", "0", "spark://127.0.0.1:1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        checks, started = 0, time.monotonic()
        while time.monotonic() - started < 2.0 and proc.poll() is None:
            assert _is_daemon(proc.pid, WORKER_CLASS, port), f"check {checks} said no"
            checks += 1
        assert checks > 1000
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """A real standalone master on free loopback ports; stopped, with its workers, at the end."""
    work_dir = tmp_path_factory.mktemp("spark-standalone")
    master = start_master(work_dir, port=free_port(), webui_port=free_port(), timeout_s=90)
    try:
        yield Standalone(master, work_dir)
    finally:
        stop_master(work_dir)
    assert not _is_daemon(master.pid, "org.apache.spark.deploy.master.Master", master.port)


@pytest.fixture
def cleanup(standalone: Standalone) -> Iterator[list[StandaloneCluster]]:
    """Scalers a test registers here are scaled back to 0 even when the test fails."""
    scalers: list[StandaloneCluster] = []
    yield scalers
    for scaler in scalers:
        scaler.stop_started()


JOB = textwrap.dedent(
    """
    import json, os, sys, time
    from landuse.spark import local_spark

    master, conf = sys.argv[1], json.loads(sys.argv[2])
    spark = local_spark("landuse-standalone-test", master=master, conf=conf)
    sc = spark.sparkContext

    def where(x):
        time.sleep(0.3)  # long enough that both single-core executors get tasks
        return x * x, os.getcwd()  # an executor's cwd is <worker work-dir>/<app>/<executor>

    rows = sc.parallelize(range(16), 16).map(where).collect()
    executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
    used = sc.master
    spark.stop()
    print(json.dumps({"total": sum(r[0] for r in rows), "dirs": sorted({r[1] for r in rows}),
                      "executors": executors, "master": used}))
    """
)


def test_scale_up_run_a_job_and_scale_down(standalone: Standalone, cleanup: list) -> None:
    scaler = standalone.scaler(max_workers=2)
    cleanup.append(scaler)
    assert scaler.current_workers() == 0

    scaler.request(2)
    scaler.request(2)  # a retried task: the workers started but not registered yet count
    assert len(scaler.owned_workers()) == 2
    status = scaler.wait(2, timeout_s=WAIT_S, poll_s=POLL_S)
    assert (status.state, status.workers) == ("ALIVE", 2)
    assert scaler.is_ready(2) and not scaler.is_ready(1)

    alive = standalone.alive_workers()
    assert len(alive) == 2
    assert {(w["host"], w["cores"], w["memory"]) for w in alive} == {("127.0.0.1", 1, 512)}
    ports = sorted(w["port"] for w in alive)
    state = json.loads((standalone.work_dir / "workers.json").read_text())
    assert sorted(w["port"] for w in state) == ports

    conf = {
        **scaler.executor_conf(),  # 512m executors: Spark's default 1g would never fit
        # Start only when both executors are up, so the job must use both workers.
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
    }
    job = subprocess.run(
        [sys.executable, "-c", JOB, standalone.master.url, json.dumps(conf)],
        capture_output=True, text=True, timeout=180, env=os.environ.copy(),
    )
    assert job.returncode == 0, job.stderr[-3000:]
    result = json.loads(job.stdout.strip().splitlines()[-1])
    assert result["master"] == standalone.master.url
    assert result["total"] == sum(x * x for x in range(16))
    assert result["executors"] == 2
    # Tasks ran in executors under both workers' own work folders.
    worker_dirs = {Path(d).relative_to(standalone.work_dir).parts[0] for d in result["dirs"]}
    assert worker_dirs == {f"worker-{p}" for p in ports}

    # 2 -> 1 in this process: the newest worker goes, and its JVM is gone.
    newest = state[-1]
    scaler.scale(1, timeout_s=WAIT_S, poll_s=POLL_S)
    assert [w["port"] for w in standalone.alive_workers()] == [state[0]["port"]]
    assert scaler.owned_workers() == [state[0]["pid"]]
    assert not _is_daemon(newest["pid"], WORKER_CLASS, newest["port"])

    # 1 -> 0 from another process (as a teardown task would), through the factory.
    options = {"master_url": standalone.master.url, "master_web_url": standalone.master.web_url,
               "work_dir": str(standalone.work_dir)}
    down = subprocess.run(
        [sys.executable, "-c",
         "import json, sys; from landuse.cluster import make_scaler; "
         "make_scaler('standalone', **json.loads(sys.argv[1])).scale(0, 60, 0.3)",
         json.dumps(options)],
        capture_output=True, text=True, timeout=120,
    )
    assert down.returncode == 0, down.stderr[-3000:]
    assert standalone.alive_workers() == []
    assert scaler.owned_workers() == []
    assert json.loads((standalone.work_dir / "workers.json").read_text()) == []


def test_waiting_for_more_workers_than_allowed_times_out(
    standalone: Standalone, cleanup: list
) -> None:
    scaler = standalone.scaler(max_workers=1)
    cleanup.append(scaler)
    with pytest.raises(ValueError, match="max_workers=1"):
        scaler.request(2)
    assert scaler.owned_workers() == []  # refused before starting anything

    scaler.scale(1, timeout_s=WAIT_S, poll_s=POLL_S)
    with pytest.raises(ClusterTimeout) as caught:
        scaler.wait(2, timeout_s=2.0, poll_s=POLL_S)
    err = caught.value
    assert (err.target, err.last_seen) == (2, 1)
    message = str(err)
    assert standalone.master.url in message
    assert "did not reach 2 worker(s) within 2 s" in message
    assert "last seen 1 worker(s), state ALIVE" in message
    assert str(standalone.work_dir / "logs") in message

    scaler.scale(0, timeout_s=WAIT_S, poll_s=POLL_S)
    assert standalone.alive_workers() == []


def test_workers_started_elsewhere_are_counted_but_not_stopped(
    standalone: Standalone, cleanup: list, tmp_path: Path
) -> None:
    mine = standalone.scaler()
    other = standalone.scaler(work_dir=tmp_path / "other")
    cleanup.extend([mine, other])
    other.scale(1, timeout_s=WAIT_S, poll_s=POLL_S)

    assert mine.current_workers() == 1
    mine.request(1)  # already there: nothing started
    assert mine.owned_workers() == []
    with pytest.raises(ClusterError, match="not started from"):
        mine.request(0)
    assert len(standalone.alive_workers()) == 1

    other.scale(0, timeout_s=WAIT_S, poll_s=POLL_S)
    assert mine.current_workers() == 0


def test_stop_started_only_stops_this_objects_workers(
    standalone: Standalone, cleanup: list
) -> None:
    """What the operator's on_kill relies on: a killed scale-up undoes its own start."""
    scaler = standalone.scaler()
    cleanup.append(scaler)
    scaler.request(1)
    assert len(scaler.owned_workers()) == 1
    later = standalone.scaler()  # e.g. the next task: it started nothing
    assert later.stop_started() == 0
    assert len(scaler.owned_workers()) == 1
    assert scaler.stop_started() == 1
    assert scaler.owned_workers() == []
    scaler.wait(0, timeout_s=WAIT_S, poll_s=POLL_S)  # the master drops it (if it registered)


def test_bad_settings_are_rejected_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="512m or 2g"):
        StandaloneCluster(memory_per_worker="lots", work_dir=tmp_path)
    with pytest.raises(ValueError, match="spark://"):
        StandaloneCluster(master_url="local[2]", work_dir=tmp_path)
    with pytest.raises(ValueError, match="bad options for the standalone backend"):
        make_scaler("standalone", cores=2)
    with pytest.raises(FileNotFoundError, match="no Spark installation"):
        find_spark_home(tmp_path)
    assert (find_spark_home() / "bin" / "spark-class").is_file()
    assert stop_master(tmp_path) is False  # a teardown after a failed setup is harmless


def test_unreachable_master_is_a_transient_error(tmp_path: Path) -> None:
    port = free_port()
    scaler = StandaloneCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{port}",
                               work_dir=tmp_path, http_timeout_s=2)
    with pytest.raises(ClusterError) as caught:
        scaler.request(1)
    assert caught.value.transient
    assert scaler.owned_workers() == []
    with pytest.raises(ClusterTimeout, match="the cluster could not be read"):
        scaler.wait(1, timeout_s=0.5, poll_s=0.2)


def _busy_port() -> tuple[Any, int]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_a_busy_master_port_fails_with_the_logs_reason(tmp_path: Path) -> None:
    sock, busy = _busy_port()
    with sock, pytest.raises(ClusterError) as caught:
        start_master(tmp_path, port=free_port(), webui_port=busy, timeout_s=90)
    assert "Spark master exited" in str(caught.value)
    assert f"Failed to bind to /127.0.0.1:{busy}" in str(caught.value)
    assert not (tmp_path / "master.json").exists()  # a failed start leaves nothing behind


def test_a_worker_that_dies_is_named_in_the_timeout(
    standalone: Standalone, cleanup: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, busy = _busy_port()
    monkeypatch.setattr("landuse.cluster.standalone.free_port", lambda host="": busy)
    scaler = standalone.scaler()
    cleanup.append(scaler)
    with sock:
        scaler.request(1)
        (pid,) = scaler.owned_workers()
        for _ in range(300):  # the JVM fails to bind and exits (bounded: 60 s)
            if not scaler.owned_workers():
                break
            time.sleep(0.2)
        assert scaler.owned_workers() == [], f"worker {pid} should have exited"
    with pytest.raises(ClusterTimeout) as caught:
        scaler.wait(1, timeout_s=0.5, poll_s=POLL_S)
    message = str(caught.value)
    assert f"worker on port {busy} exited" in message
    assert "BindException" in message and "Service 'sparkWorker' failed" in message
    scaler.request(0)  # drops the dead worker from the state file
    assert json.loads((standalone.work_dir / "workers.json").read_text()) == []


def test_state_defaults_to_a_shared_folder_not_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LANDUSE_SPARK_WORK_DIR", "LANDUSE_STATE_DIR", "LANDUSE_STORAGE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    assert default_work_dir() == config.PROJECT_ROOT / "output" / "state" / "spark-standalone"
    monkeypatch.setenv("LANDUSE_STORAGE_ROOT", "abfs://landuse/out")  # no lock file there
    assert default_work_dir() == config.PROJECT_ROOT / "output" / "state" / "spark-standalone"
    monkeypatch.setenv("LANDUSE_STORAGE_ROOT", str(tmp_path / "shared"))
    assert default_work_dir() == tmp_path / "shared" / "state" / "spark-standalone"
    monkeypatch.setenv("LANDUSE_STATE_DIR", str(tmp_path / "state"))
    assert default_work_dir() == tmp_path / "state" / "spark-standalone"
    monkeypatch.setenv("LANDUSE_SPARK_WORK_DIR", str(tmp_path / "spark"))
    assert default_work_dir() == tmp_path / "spark"


def test_a_fresh_process_scales_down_through_the_shared_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scale up here with the default work folder; a new Python process (a teardown task,
    nothing shared with this one but $LANDUSE_STATE_DIR) stops the worker and the master."""
    monkeypatch.delenv("LANDUSE_SPARK_WORK_DIR", raising=False)
    monkeypatch.setenv("LANDUSE_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "state" / "spark-standalone"
    master = start_master(port=free_port(), webui_port=free_port(), timeout_s=90)
    try:
        scaler = StandaloneCluster(master.url, master.web_url, memory_per_worker="512m")
        assert scaler.work_dir == folder
        scaler.scale(1, timeout_s=WAIT_S, poll_s=POLL_S)
        (worker,) = json.loads((folder / "workers.json").read_text())
        assert worker["hostname"] == this_host()
        assert json.loads((folder / "master.json").read_text())["hostname"] == this_host()

        down = subprocess.run(
            [sys.executable, "-c",
             "import sys; from landuse.cluster import make_scaler; "
             "from landuse.cluster.standalone import stop_master; "
             "make_scaler('standalone', master_url=sys.argv[1], master_web_url=sys.argv[2])"
             ".scale(0, 60, 0.3); print(stop_master())",
             master.url, master.web_url],
            capture_output=True, text=True, timeout=120, env=os.environ.copy(),
        )
        assert down.returncode == 0, down.stderr[-3000:]
        assert down.stdout.split() == ["True"]  # the master was running, and was stopped
        assert not _is_daemon(worker["pid"], WORKER_CLASS, worker["port"])
        assert not _is_daemon(master.pid, MASTER_CLASS, master.port)
        assert json.loads((folder / "workers.json").read_text()) == []
        assert not (folder / "master.json").exists()
    finally:
        stop_master()  # a no-op when the child process did its job


def _on_another_host(work_dir: Path, host: str) -> list[dict[str, Any]]:
    """Rewrite the state file as if its workers had been started on ``host``."""
    state = json.loads((work_dir / "workers.json").read_text())
    (work_dir / "workers.json").write_text(json.dumps([{**w, "hostname": host} for w in state]))
    return state


def test_a_worker_started_on_another_host_is_not_stopped_from_here(
    standalone: Standalone, cleanup: list
) -> None:
    scaler = standalone.scaler()
    cleanup.append(scaler)
    scaler.scale(1, timeout_s=WAIT_S, poll_s=POLL_S)
    (worker,) = _on_another_host(standalone.work_dir, "other-host")

    later = standalone.scaler()  # a teardown task on this host
    assert later.owned_workers() == []  # a pid from another machine means nothing here
    with pytest.raises(ClusterError) as caught:
        later.request(0)
    message = str(caught.value)
    assert f"other-host pid {worker['pid']} port {worker['port']}" in message
    assert "cannot be stopped from here; scale down on that host" in message
    with pytest.raises(ClusterError, match="started on another host"):
        stop_master(standalone.work_dir)
    assert _is_daemon(worker["pid"], WORKER_CLASS, worker["port"])  # untouched
    assert _is_daemon(standalone.master.pid, MASTER_CLASS, standalone.master.port)
    assert len(standalone.alive_workers()) == 1

    _on_another_host(standalone.work_dir, this_host())  # back "on that host": it can
    later.scale(0, timeout_s=WAIT_S, poll_s=POLL_S)
    assert json.loads((standalone.work_dir / "workers.json").read_text()) == []


def test_stale_entries_after_a_reboot_are_dropped(standalone: Standalone) -> None:
    """Pids that are gone, or now belong to another program, are not workers any more."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    url = standalone.master.url
    stale = [
        {"pid": exited.pid, "port": free_port(), "master_url": url, "log": "x",
         "hostname": this_host()},
        {"pid": os.getpid(), "port": free_port(), "master_url": url, "log": "x",
         "hostname": this_host()},  # a reused pid: this very test process
        {"pid": exited.pid, "port": free_port(), "master_url": url, "log": "x"},  # old format
    ]
    (standalone.work_dir / "workers.json").write_text(json.dumps(stale))
    scaler = standalone.scaler()
    assert scaler.owned_workers() == []
    scaler.request(0)
    assert json.loads((standalone.work_dir / "workers.json").read_text()) == []


def test_every_daemon_port_listens_on_loopback_only(
    standalone: Standalone, cleanup: list
) -> None:
    """The master's and a worker's RPC and web UI ports (and anything else they open)."""
    scaler = standalone.scaler()
    cleanup.append(scaler)
    scaler.scale(1, timeout_s=WAIT_S, poll_s=POLL_S)
    daemons = [psutil.Process(standalone.master.pid),
               *(psutil.Process(pid) for pid in scaler.owned_workers())]
    processes = [p for d in daemons for p in (d, *d.children(recursive=True))]
    listening = [(p.pid, c.laddr.ip, c.laddr.port) for p in processes
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ports = {port for _, _, port in listening}
    assert {standalone.master.port, int(standalone.master.web_url.rsplit(":", 1)[1])} <= ports
    assert len(listening) >= 4, listening  # master RPC + UI, worker RPC + UI
    # The JVM listens on IPv6 sockets: 127.0.0.1 shows as its IPv4-mapped form.
    loopback = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
    assert [x for x in listening if x[1] not in loopback] == [], listening
    scaler.scale(0, timeout_s=WAIT_S, poll_s=POLL_S)


def test_daemon_ports_are_chosen_below_the_ephemeral_range():
    """An outgoing connection takes ports from the ephemeral range: a daemon's exact port
    chosen there could be gone before the daemon binds it (seen once in a full test run)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= p < low for p in ports) and len(ports) > 1
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when chosen
