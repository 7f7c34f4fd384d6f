"""Fault-injection fixtures: an Azurite that can be killed and brought back, process checks.

The session-wide ``azurite`` fixture (tests/conftest.py) is shared by many tests and must
never die; the one here belongs to a single test, listens on a fixed loopback port and keeps
its data in a folder of the test's own, so ``kill()`` + ``start()`` is an outage of the same
store: same endpoint, same account, the data it had persisted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

PROJECT = Path(__file__).resolve().parents[2]
AZURITE = PROJECT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's published, well-known development account (not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout_s: float, alive: subprocess.Popen[bytes] | None = None
) -> float:
    """Seconds until something accepts connections on the loopback ``port``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"process {alive.pid} exited with {alive.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


@dataclass
class KillableAzurite:
    """One Azurite blob service on a fixed port and data folder, for one test."""

    port: int
    location: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    procs: list[psutil.Process] = field(default_factory=list)  # every one this object ran

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def start(self, timeout_s: float = 30.0) -> float:
        """Start (or restart) the service; returns the seconds it took to accept connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {**os.environ, "NODE_OPTIONS": "--max-old-space-size=512"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                 "--location", str(self.location), "--skipApiVersionCheck",
                 "--disableTelemetry", "--loose"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        self.procs.append(psutil.Process(self.proc.pid))
        return wait_for_port(self.port, timeout_s, self.proc)

    def kill(self) -> None:
        """``kill -9``: no shutdown hook runs, in-flight requests are cut."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(name="assert_gone")
def assert_gone_fixture() -> Callable[..., None]:
    """:func:`assert_gone`, for the tests (conftest modules are not imported by tests)."""
    return assert_gone


@pytest.fixture
def killable_azurite(tmp_path: Path) -> Iterator[KillableAzurite]:
    """An Azurite this test may kill -9 and restart on the same port and data folder."""
    if not AZURITE.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE}: run scripts/setup.sh")
    location = tmp_path / "azurite-data"
    location.mkdir()
    store = KillableAzurite(free_port(), location, tmp_path / "azurite.log")
    store.start()
    try:
        yield store
    finally:
        store.stop()
        assert_gone(store.procs, "Azurite")


def running(procs: list[psutil.Process]) -> list[int]:
    """Pids of ``procs`` still running (a recycled pid or a zombie counts as gone)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return left


def assert_gone(procs: list[psutil.Process], what: str, timeout_s: float = 15.0) -> None:
    """Fail when any of ``procs`` is still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    left: list[int] = []
    while time.monotonic() < deadline:
        left = running(procs)
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} processes still running: {left}")
