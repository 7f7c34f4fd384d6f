"""Every port the project opens listens on loopback only.

A real deployment (api-server, scheduler with the LocalExecutor, dag-processor, triggerer,
the two Celery workers) plus PostgreSQL, Redis and the Azurite emulator, all started by this
test session: once the API answers, every component reports healthy and the scheduler's,
triggerer's and workers' log servers accept connections, the listening TCP sockets of this
process's descendants are listed, and any address other than a loopback one (127.0.0.1, ::1,
::ffff:127.0.0.1) fails the test with the process that holds it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from typing import Any

import psutil
import pytest
import requests

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "worker-default",
              "worker-gpu")


def _loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or 127.0.0.1 as an IPv4-mapped IPv6 address (Java listens so)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _health(api_url: str) -> dict[str, Any]:
    try:
        r = requests.get(f"{api_url}/api/v2/monitor/health", timeout=10)
        return dict(r.json()) if r.ok else {}
    except (requests.RequestException, ValueError):
        return {}


def _listening() -> list[tuple[psutil.Process, str, int]]:
    """(process, address, port) of every listening TCP socket of this process's descendants
    (the stack's components and what they started, Azurite)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        found += [(proc, c.laddr.ip, c.laddr.port) for c in conns
                  if c.status == psutil.CONN_LISTEN]
    return found


def _describe(proc: psutil.Process, owners: dict[int, str]) -> str:
    """The process, its command line and the component (or other child) that started it."""
    try:
        cmdline = " ".join(" ".join(proc.cmdline()).split())[:200]
        owner = owners.get(proc.pid, "not a component")
        return f"pid {proc.pid} {proc.name()!r} ({owner}): {cmdline}"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


@pytest.fixture(scope="module")
def deployed(airflow_stack, azurite: str):
    """The components up and healthy, the log servers accepting connections."""
    airflow_stack.up(components=COMPONENTS)
    env = airflow_stack.env
    log_ports = {"scheduler": int(env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]),
                 "triggerer": int(env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]),
                 **airflow_stack.worker_log_ports}
    deadline = time.monotonic() + 180
    while True:
        health = _health(airflow_stack.api_url)
        healthy = {k for k, v in health.items()
                   if isinstance(v, dict) and v.get("status") == "healthy"}
        ready = {"metadatabase", "scheduler", "triggerer", "dag_processor"} <= healthy and all(
            _accepts(p) for p in log_ports.values())
        if ready:
            break
        dead = [n for n, p in airflow_stack.processes.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = {n: (airflow_stack.home / f"{n}.log").read_text()[-1500:] for n in COMPONENTS}
            pytest.fail(f"not ready (dead: {dead}, health: {health}, log ports: {log_ports}):"
                        f"\n{logs}")
        time.sleep(1)
    return airflow_stack, log_ports


@pytest.mark.azurite
@pytest.mark.timeout(420)
def test_every_listening_socket_is_on_loopback(deployed, azurite: str, postgres, redis):
    stack, log_ports = deployed
    api_port = int(stack.env["AIRFLOW__API__PORT"])
    azurite_port = int(azurite.split("BlobEndpoint=http://127.0.0.1:", 1)[1].split("/", 1)[0])

    listening = _listening()
    by_port: dict[int, set[str]] = {}
    for _, address, port in listening:
        by_port.setdefault(port, set()).add(address)
    # What must be there: otherwise the check below would pass on nothing.
    expected = {"api-server": api_port, "scheduler log server": log_ports["scheduler"],
                "triggerer log server": log_ports["triggerer"], "azurite": azurite_port,
                "postgres": postgres.port, "redis": redis.port,
                **{f"{name} log server": port for name, port in stack.worker_log_ports.items()}}
    missing = {name: port for name, port in expected.items() if port not in by_port}
    assert not missing, f"not listening: {missing}; found {sorted(by_port)}"
    owners: dict[int, str] = {}  # pid -> the component it is, or that started it
    for name, popen in stack.processes.items():
        root = psutil.Process(popen.pid)
        owners.update({p.pid: name for p in (root, *root.children(recursive=True))})
    # The log servers belong to their components (serve_logs runs in a child process).
    for name, port in log_ports.items():
        holders = {owners.get(p.pid) for p, _, q in listening if q == port}
        assert holders == {name}, f"{name}'s log server port {port} is held by {holders}"

    offending = sorted({f"{address}:{port} held by {_describe(proc, owners)}"
                        for proc, address, port in listening if not _loopback(address)})
    assert not offending, "listening beyond loopback:\n" + "\n".join(offending)
    print(f"listening on loopback only: {sorted(by_port.items())} (pid {os.getpid()} tree)")
