"""Spark standalone on this machine: a master and worker processes, started and stopped here.

Workers are ``spark-class org.apache.spark.deploy.worker.Worker`` processes from the Spark
installation (by default the pip ``pyspark`` package, which ships ``bin/spark-class`` and
the jars). Each runs in its own session, so it outlives the process that started it: a
scale-up task starts workers, and a later scale-down task (another process) stops them.
What ties the two together is a state file in the work folder listing each started
worker's host name, pid and RPC port; the port also identifies the worker in the master's
JSON (``{web_url}/json/``), which is where ALIVE workers are counted. A pid is only
signalled after ``/proc`` confirms it is still that worker, so a recycled pid is never
killed, and an entry whose process is gone or is now another program (after a reboot) is
dropped. An entry from another host is kept but never signalled: a scale-down that would
need it fails, saying to scale down on that host.

The work folder (state files, lock, logs, worker folders) must be one that every task
scaling the cluster reads, so it is not in ``/tmp`` (private to one machine, emptied on
reboot while a stale state file would have to be found). It is, first match wins: the
scaler's ``work_dir`` option (a connection extra in Airflow); ``$LANDUSE_SPARK_WORK_DIR``;
``spark-standalone/`` in ``$LANDUSE_STATE_DIR``; ``state/spark-standalone/`` under the
storage root (:func:`landuse.config.storage_root`) when that is a local folder; else
``output/state/spark-standalone/`` in the project. See :func:`default_work_dir`.

Everything listens on loopback: the daemons get ``--host 127.0.0.1`` and
``SPARK_LOCAL_IP=127.0.0.1`` (which their web UIs bind to), the worker UIs take free ports,
and the master's REST submission server (fixed port 6066) is switched off. Ports are exact
(``spark.port.maxRetries=0``): a busy port fails the daemon instead of moving it. Mind that
the master UI's usual 8080 is also the Airflow API server's port in this project.

An application on this cluster must ask for executors that fit a worker: Spark's default
``spark.executor.memory`` is 1g, so with smaller workers pass
:meth:`StandaloneCluster.executor_conf` to the session.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from landuse import config
from landuse.cluster.base import ClusterError, ClusterScaler, ClusterStatus, check_target, http_json

log = logging.getLogger(__name__)

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
WORKERS_FILE = "workers.json"
MASTER_FILE = "master.json"
_MEMORY = re.compile(r"^[1-9][0-9]*[kmgt]?$", re.IGNORECASE)
# Spark moves to the next port when one is taken; a daemon elsewhere than asked would be
# invisible to the state file (workers) or the health check (master), so fail instead.
_EXACT_PORTS = "-Dspark.port.maxRetries=0"
# Daemons started by this process, kept so they can be reaped (no zombies, no
# "subprocess still running" warnings); daemons started by other processes are not here.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def state_dir() -> Path:
    """Folder for state that every task must see: ``$LANDUSE_STATE_DIR``, else ``state/``
    under the storage root when that is a local folder, else ``output/state`` in the project.
    """
    env = os.environ.get("LANDUSE_STATE_DIR")
    if env:
        return Path(env)
    root = config.storage_root()
    if root.startswith("file://"):
        root = root.removeprefix("file://")
    if "://" not in root:  # a cloud root (abfs://) cannot hold a lock file or logs
        return Path(root) / "state"
    return config.PROJECT_ROOT / "output" / "state"


def default_work_dir() -> Path:
    """``$LANDUSE_SPARK_WORK_DIR``, else ``spark-standalone/`` in :func:`state_dir`."""
    env = os.environ.get("LANDUSE_SPARK_WORK_DIR")
    return Path(env) if env else state_dir() / "spark-standalone"


def this_host() -> str:
    """This machine's name, as state files record where a process was started."""
    return socket.gethostname()


def find_spark_home(spark_home: str | os.PathLike[str] | None = None) -> Path:
    """The Spark installation: ``spark_home``, else ``$SPARK_HOME``, else the pyspark package.

    Raises:
        FileNotFoundError: none of them has ``bin/spark-class``.
    """
    candidates: list[Path] = []
    if spark_home:
        candidates.append(Path(spark_home))
    elif os.environ.get("SPARK_HOME"):
        candidates.append(Path(os.environ["SPARK_HOME"]))
    else:
        spec = importlib.util.find_spec("pyspark")  # locate without importing pyspark
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(next(iter(spec.submodule_search_locations))))
    for home in candidates:
        if (home / "bin" / "spark-class").is_file():
            return home.resolve()
    tried = ", ".join(str(c) for c in candidates) or "nothing (no SPARK_HOME, no pyspark)"
    raise FileNotFoundError(f"no Spark installation with bin/spark-class; tried {tried}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now, below the kernel's ephemeral range when it can be.

    Daemons are started with exact ports (``spark.port.maxRetries=0``) a moment after the
    port is chosen. A port from the ephemeral range (the one the OS hands out for port 0)
    can be taken in that moment by any outgoing connection on a busy machine, and the
    daemon then dies with "Address already in use"; outgoing connections never take a port
    below that range. Random choice keeps two concurrent callers apart.
    """
    low = _ephemeral_low()
    for port in random.sample(range(_FIXED_PORTS_FROM, low), min(64, low - _FIXED_PORTS_FROM)):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # nothing free below the range: let the OS pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Lowest port chosen for daemons (well above the registered services' common ports).
_FIXED_PORTS_FROM = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return max(_FIXED_PORTS_FROM, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass(frozen=True)
class SparkMaster:
    """A running standalone master.

    Attributes:
        pid: the master JVM's pid.
        url: ``spark://host:port`` for applications and workers.
        web_url: the web UI, whose ``/json/`` lists the workers.
        port: RPC port.
        log: the master's log file.
        hostname: the machine it was started on (:func:`this_host`); only there can its
            pid be checked and signalled.
    """

    pid: int
    url: str
    web_url: str
    port: int
    log: str
    hostname: str = ""


@dataclass(frozen=True)
class _Worker:
    """A worker process this module started (one entry of the state file)."""

    pid: int
    port: int
    master_url: str
    log: str
    hostname: str  # where it runs: its pid means nothing on another machine


def _daemon_env(spark_home: Path, host: str, opts_var: str, opts: str) -> dict[str, str]:
    env = dict(os.environ)
    env["SPARK_HOME"] = str(spark_home)  # workers launch executors from $SPARK_HOME
    env["SPARK_LOCAL_IP"] = host  # the daemons' web UIs bind to this address
    env[opts_var] = f"{env.get(opts_var, '')} {opts}".strip()
    return env


_EXEC_READS = 50  # tries of an empty /proc/PID/cmdline, 10 ms apart


def _cmdline(pid: int) -> list[str] | None:
    """The process's argv; None when it is gone or a zombie; [] when /proc is unavailable."""
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():  # not Linux: fall back to "some process has this pid"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return []
        return []
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return None
        for _ in range(_EXEC_READS):
            # Empty while the process is between programs (spark-class execs env, bash,
            # then java; measured here: about 1 read in 2,500 during a worker's first
            # second). Taken for "not our daemon", that dropped a starting worker from the
            # state file and started another.
            argv = (proc / "cmdline").read_bytes()
            if argv:
                break
            time.sleep(0.01)
        return argv.decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _is_daemon(pid: int, main_class: str, port: int) -> bool:
    """Whether ``pid`` is still the Spark daemon of ``main_class`` on ``port``."""
    _reap(pid)  # a daemon we started that exited (stopped by another process) is a zombie
    argv = _cmdline(pid)
    if argv is None:
        return False
    if not argv:  # no /proc to check against: trust the pid
        return True
    return main_class in argv and any(
        a == "--port" and b == str(port) for a, b in itertools.pairwise(argv)
    )


def _reap(pid: int) -> None:
    """Collect the exit status when ``pid`` is our child, so it does not linger as a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _terminate(pid: int, main_class: str, port: int, timeout_s: float) -> None:
    """SIGTERM the daemon's process group (the JVM and its executors), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not _is_daemon(pid, main_class, port):
            return
        try:
            # Started with start_new_session, so pid is its group's leader; executors the
            # worker launched are in the group too.
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as err:
            raise ClusterError(f"not allowed to stop pid {pid} ({main_class}): {err}") from err
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _is_daemon(pid, main_class, port):
                return
            time.sleep(0.2)
    raise ClusterError(f"pid {pid} ({main_class} on port {port}) survived SIGKILL")


def _log_tail(path: str | Path, lines: int = 2) -> str:
    """The log's first ERROR line and what follows it (the cause), else its last lines."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [i for i, line in enumerate(text) if " ERROR " in line]
    chosen = text[errors[0]:errors[0] + lines] if errors else text[-lines:]
    return " | ".join(line.strip()[:300] for line in chosen) + f" (log: {path})"


@contextlib.contextmanager
def _locked(work_dir: Path) -> Iterator[None]:
    """Serialise state-file updates between processes (two tasks resizing at once)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except ValueError as err:
        raise ClusterError(f"state file {path} is corrupt: {err}") from err


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # atomic: another process never reads half a file


def _read_workers(work_dir: Path) -> list[_Worker]:
    # Entries written before hosts were recorded came from this machine (a /tmp folder).
    return [_Worker(**{"hostname": this_host(), **w})
            for w in _read_json(work_dir / WORKERS_FILE, [])]


def _write_workers(work_dir: Path, workers: list[_Worker]) -> None:
    _write_json(work_dir / WORKERS_FILE, [asdict(w) for w in workers])


def _split_by_host(workers: list[_Worker]) -> tuple[list[_Worker], list[_Worker]]:
    """(entries of this host whose worker still runs, entries of other hosts).

    Entries of this host whose process is gone, or whose pid now belongs to another
    program (a reboot), are dropped; entries of other hosts cannot be checked from here.
    """
    here = this_host()
    live = [w for w in workers if w.hostname == here and _is_daemon(w.pid, WORKER_CLASS, w.port)]
    return live, [w for w in workers if w.hostname != here]


def _elsewhere(workers: list[_Worker]) -> str:
    """The workers, as an error message lists them (host, pid, port)."""
    return ", ".join(f"{w.hostname} pid {w.pid} port {w.port}" for w in workers)


def _check_master_here(folder: Path, known: dict[str, Any]) -> None:
    """Refuse to treat a master recorded by another host as one of this host's processes."""
    started_on = known.get("hostname") or this_host()
    if started_on != this_host():
        raise ClusterError(
            f"the Spark master in {folder / MASTER_FILE} was started on host {started_on}, "
            f"not on this host ({this_host()}): a process on another host cannot be checked "
            f"or stopped from here; do it on {started_on} (or delete the file if that master "
            "is gone)"
        )


def start_master(
    work_dir: str | os.PathLike[str] | None = None,
    *,
    spark_home: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 7077,
    webui_port: int = 8080,
    timeout_s: float = 60.0,
) -> SparkMaster:
    """Start a standalone master (or return the one this work folder already runs).

    Args:
        work_dir: folder for the state files and logs; default :func:`default_work_dir`.
        spark_home: Spark installation; see :func:`find_spark_home`.
        host: address to listen on.
        port: RPC port (``spark://host:port``); 0 picks a free one.
        webui_port: web UI port; 0 picks a free one.
        timeout_s: how long to wait for the master to report ALIVE.

    Raises:
        ClusterError: the master exited or did not come up in time (the log's tail is in
            the message).
    """
    folder = Path(work_dir) if work_dir else default_work_dir()
    home = find_spark_home(spark_home)
    with _locked(folder):
        known = _read_json(folder / MASTER_FILE, None)
        if known:
            _check_master_here(folder, known)
        if known and _is_daemon(known["pid"], MASTER_CLASS, known["port"]):
            return SparkMaster(**known)  # idempotent: a retried setup task reuses it
        port = port or free_port(host)
        webui_port = webui_port or free_port(host)
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        log_path = folder / "logs" / f"master-{port}.log"
        # A worker stopped by a signal can stay ALIVE on the master until it misses heartbeats
        # for spark.worker.timeout (60 s by default, as long as a scale-down's wait): 15 s.
        env = _daemon_env(home, host, "SPARK_MASTER_OPTS",
                          f"-Dspark.master.rest.enabled=false -Dspark.worker.timeout=15 "
                          f"{_EXACT_PORTS}")
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [str(home / "bin" / "spark-class"), MASTER_CLASS, "--host", host,
                 "--port", str(port), "--webui-port", str(webui_port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, cwd=folder,
            )
        _CHILDREN[proc.pid] = proc
        master = SparkMaster(
            pid=proc.pid, url=f"spark://{host}:{port}", web_url=f"http://{host}:{webui_port}",
            port=port, log=str(log_path), hostname=this_host(),
        )
        _write_json(folder / MASTER_FILE, asdict(master))
    import requests

    session = requests.Session()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (folder / MASTER_FILE).unlink(missing_ok=True)  # a failed start leaves nothing
            raise ClusterError(
                f"Spark master exited with code {proc.returncode}: {_log_tail(log_path)}"
            )
        try:
            info = http_json(session, "GET", f"{master.web_url}/json/", cluster="Spark master",
                             timeout_s=2.0)
        except ClusterError:
            info = {}
        if info.get("status") == "ALIVE" and info.get("url") == master.url:
            log.info("Spark master %s up (pid %d)", master.url, master.pid)
            return master
        time.sleep(0.3)
    stop_master(folder, stop_workers=False)
    raise ClusterError(
        f"Spark master {master.url} not ALIVE within {timeout_s:g} s: {_log_tail(log_path)}"
    )


def stop_master(
    work_dir: str | os.PathLike[str] | None = None,
    *,
    stop_workers: bool = True,
    timeout_s: float = 20.0,
) -> bool:
    """Stop the master this work folder started, and first (by default) its workers.

    Safe to call when nothing runs (a teardown after a failed setup).

    Returns:
        Whether a master was stopped.

    Raises:
        ClusterError: the master, or (with ``stop_workers``) a recorded worker, was started
            on another host; nothing is stopped then.
    """
    folder = Path(work_dir) if work_dir else default_work_dir()
    if stop_workers:
        with _locked(folder):
            live, elsewhere = _split_by_host(_read_workers(folder))
            if elsewhere:
                raise ClusterError(
                    f"{folder / WORKERS_FILE} lists worker(s) started on another host "
                    f"({_elsewhere(elsewhere)}); this is {this_host()}, and a process on "
                    "another host cannot be stopped from here: scale down there first"
                )
            for worker in reversed(live):
                _terminate(worker.pid, WORKER_CLASS, worker.port, timeout_s)
            _write_workers(folder, [])
    with _locked(folder):
        known = _read_json(folder / MASTER_FILE, None)
        if not known:
            return False
        _check_master_here(folder, known)
        running = _is_daemon(known["pid"], MASTER_CLASS, known["port"])
        _terminate(known["pid"], MASTER_CLASS, known["port"], timeout_s)
        (folder / MASTER_FILE).unlink(missing_ok=True)
    return running


class StandaloneCluster(ClusterScaler):
    """A Spark standalone master whose workers this machine starts and stops.

    Scaling down only stops workers started through this work folder; workers started some
    other way are counted but left alone (a resize that would need stopping them fails).

    Args:
        master_url: the master's ``spark://`` URL (what workers connect to).
        master_web_url: the master's web UI (its ``/json/`` lists the workers).
        spark_home: Spark installation; see :func:`find_spark_home`.
        work_dir: state file, logs and worker folders; default :func:`default_work_dir`.
            Every task scaling this cluster must use the same folder.
        cores_per_worker: ``--cores`` of each worker.
        memory_per_worker: ``--memory`` of each worker (``512m``, ``2g``).
        max_workers: most workers this scaler may run at once (a guard against a bad
            parameter swamping the machine); None for no limit.
        host: address the workers listen on.
        stop_timeout_s: how long a worker gets to exit after SIGTERM before SIGKILL.
        http_timeout_s: timeout of each call to the master's web UI.
    """

    def __init__(
        self,
        master_url: str = "spark://127.0.0.1:7077",
        master_web_url: str = "http://127.0.0.1:8080",
        spark_home: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        cores_per_worker: int = 1,
        memory_per_worker: str = "1g",
        max_workers: int | None = None,
        host: str = "127.0.0.1",
        stop_timeout_s: float = 20.0,
        http_timeout_s: float = 10.0,
    ) -> None:
        import requests

        if not master_url.startswith("spark://"):
            raise ValueError(f"master_url must be spark://host:port, got {master_url!r}")
        if cores_per_worker < 1:
            raise ValueError(f"cores_per_worker must be >= 1, got {cores_per_worker}")
        if not _MEMORY.fullmatch(memory_per_worker):
            raise ValueError(f"memory_per_worker must look like 512m or 2g, got "
                             f"{memory_per_worker!r}")
        if max_workers is not None and max_workers < 0:
            raise ValueError(f"max_workers must be >= 0, got {max_workers}")
        self.master_url = master_url
        self.master_web_url = master_web_url.rstrip("/")
        self.spark_home = find_spark_home(spark_home)
        self.work_dir = Path(work_dir) if work_dir else default_work_dir()
        self.cores_per_worker = cores_per_worker
        self.memory_per_worker = memory_per_worker
        self.max_workers = max_workers
        self.host = host
        self.stop_timeout_s = stop_timeout_s
        self.http_timeout_s = http_timeout_s
        self._session = requests.Session()
        self._started_here: list[_Worker] = []

    @property
    def name(self) -> str:
        return f"Spark standalone cluster {self.master_url}"

    def __repr__(self) -> str:
        return f"StandaloneCluster({self.master_url!r}, work_dir={str(self.work_dir)!r})"

    def executor_conf(self) -> dict[str, str]:
        """Spark settings for an application that should fill each worker with one executor."""
        return {
            "spark.executor.memory": self.memory_per_worker,
            "spark.executor.cores": str(self.cores_per_worker),
        }

    def _alive_workers(self) -> tuple[str, list[dict[str, Any]]]:
        info = http_json(self._session, "GET", f"{self.master_web_url}/json/",
                         cluster=self.name, timeout_s=self.http_timeout_s)
        workers = [w for w in info.get("workers", []) if w.get("state") == "ALIVE"]
        return str(info.get("status", "UNKNOWN")), workers

    def status(self) -> ClusterStatus:
        """Count the ALIVE workers in the master's JSON."""
        state, workers = self._alive_workers()
        return ClusterStatus(state=state, running=state == "ALIVE", workers=len(workers))

    def owned_workers(self) -> list[int]:
        """Pids of running workers started on this host through this work folder for this
        master."""
        live, _ = _split_by_host(_read_workers(self.work_dir))
        return [w.pid for w in live if w.master_url == self.master_url]

    def request(self, target: int) -> None:
        """Start or stop local workers so that ``target`` will be registered.

        Workers started here but not registered yet count as present, so a retried request
        does not start extra ones.

        Raises:
            ValueError: ``target`` exceeds ``max_workers``.
            ClusterError: the master is unreachable, or reaching ``target`` would mean
                stopping workers not started here (through another folder, or on another
                host).
        """
        check_target(target)
        with _locked(self.work_dir):
            live, elsewhere = _split_by_host(_read_workers(self.work_dir))
            mine = [w for w in live if w.master_url == self.master_url]
            _, registered = self._alive_workers()
            my_ports = {w.port for w in mine}
            foreign = [w for w in registered
                       if not (w.get("host") == self.host and w.get("port") in my_ports)]
            have = len(foreign) + len(mine)
            if target > have:
                wanted = len(mine) + target - have
                if self.max_workers is not None and wanted > self.max_workers:
                    raise ValueError(
                        f"{self.name}: {target} workers would need {wanted} local workers, "
                        f"more than max_workers={self.max_workers}"
                    )
                for _ in range(target - have):
                    worker = self._start_worker()
                    mine.append(worker)
                    live.append(worker)
                    self._started_here.append(worker)
                    # Record each at once: a crash part-way must not leave unrecorded workers.
                    _write_workers(self.work_dir, elsewhere + live)
            elif target < have:
                excess = have - target
                if excess > len(mine):
                    remote = [w for w in elsewhere if w.master_url == self.master_url]
                    if remote:
                        raise ClusterError(
                            f"{self.name}: cannot go down to {target} workers from this host "
                            f"({this_host()}): {len(remote)} worker(s) were started on another "
                            f"host ({_elsewhere(remote)}), and a process on another host "
                            "cannot be stopped from here; scale down on that host"
                        )
                    raise ClusterError(
                        f"{self.name}: cannot go down to {target} workers: {len(foreign)} "
                        f"registered worker(s) were not started from {self.work_dir} and are "
                        "left alone"
                    )
                for worker in mine[-excess:][::-1]:  # newest first
                    _terminate(worker.pid, WORKER_CLASS, worker.port, self.stop_timeout_s)
                    live.remove(worker)
                    _write_workers(self.work_dir, elsewhere + live)
            else:
                _write_workers(self.work_dir, elsewhere + live)  # drop stale entries

    def _start_worker(self) -> _Worker:
        port = free_port(self.host)
        worker_dir = self.work_dir / f"worker-{port}"
        worker_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "logs").mkdir(exist_ok=True)
        log_path = self.work_dir / "logs" / f"worker-{port}.log"
        env = _daemon_env(self.spark_home, self.host, "SPARK_WORKER_OPTS", _EXACT_PORTS)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                [str(self.spark_home / "bin" / "spark-class"), WORKER_CLASS,
                 "--host", self.host, "--port", str(port), "--webui-port", "0",
                 "--cores", str(self.cores_per_worker), "--memory", self.memory_per_worker,
                 "--work-dir", str(worker_dir), self.master_url],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # outlive this task; one group with its executors
                cwd=worker_dir,
            )
        _CHILDREN[proc.pid] = proc
        log.info("started Spark worker pid %d on port %d for %s", proc.pid, port, self.master_url)
        return _Worker(pid=proc.pid, port=port, master_url=self.master_url, log=str(log_path),
                       hostname=this_host())

    def stop_started(self) -> int:
        """Stop the workers this object started (a killed scale-up task cleans up after itself).

        Returns:
            How many were still running and got stopped.
        """
        stopped = 0
        with _locked(self.work_dir):
            recorded = _read_workers(self.work_dir)
            for worker in reversed(self._started_here):
                if _is_daemon(worker.pid, WORKER_CLASS, worker.port):
                    _terminate(worker.pid, WORKER_CLASS, worker.port, self.stop_timeout_s)
                    stopped += 1
            _write_workers(self.work_dir, [w for w in recorded if w not in self._started_here])
            self._started_here.clear()
        return stopped

    def diagnostics(self) -> str:
        """Which started workers have exited, with the tail of their logs."""
        notes = []
        here = this_host()
        for worker in _read_workers(self.work_dir):
            if worker.master_url == self.master_url and worker.hostname == here and not (
                _is_daemon(worker.pid, WORKER_CLASS, worker.port)
            ):
                notes.append(f"worker on port {worker.port} exited: {_log_tail(worker.log)}")
        notes.append(f"worker logs in {self.work_dir / 'logs'}")
        return "; ".join(notes)
