"""Shared fixtures: real data paths, a small synthetic county set, and the Azurite emulator."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT / "tests" / "fixtures"
SAMPLE = PROJECT / "sample"
AZURITE = PROJECT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's published, well-known development account (not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# Tests write under the system's temporary folder and into Azurite containers of their own:
# allow both as run locations (landuse.places), here and in every process the tests start.
os.environ.setdefault("LANDUSE_ALLOWED_ROOTS", f"{tempfile.gettempdir()},abfs://")

logging.getLogger("azure").setLevel(logging.WARNING)
logging.getLogger("py4j").setLevel(logging.WARNING)  # its shutdown message outlives pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Kill multiprocessing children that tests left running, and say so: at exit,
    multiprocessing waits for each of them without a timeout, so one that survived its
    test's teardown would keep pytest (and CI) from ever finishing."""
    import multiprocessing

    left = multiprocessing.active_children()
    for child in left:
        child.kill()
        child.join(10)
    if left:
        names = ", ".join(f"{c.name} (pid {c.pid})" for c in left)
        session.config.get_terminal_writer().line(
            f"conftest: killed processes that tests left running: {names}", yellow=True)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Real NAIP GeoTIFFs and the seed's sample tile (see tests/fixtures/LICENSE.*)."""
    return FIXTURES


@pytest.fixture(scope="session")
def real_scene() -> Path:
    """A real 4-band NAIP scene of the bundled sample (Stutsman County, ND, 2016, 5 m)."""
    return SAMPLE / "naip" / "m_4709963_se_14_1_20160816.tif"


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small synthetic counties (6 × 6 tiles each), 2010 and 2016, with planted changes."""
    from landuse.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(str(out), counties=2, size_m=1344.0, res_m=4.0, parcel_m=500.0, seed=7)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Azurite blob service on a free loopback port; yields its connection string."""
    if not AZURITE.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE}: run scripts/setup.sh")
    port = _free_port()
    location = tmp_path_factory.mktemp("azurite")
    env = {**os.environ, "NODE_OPTIONS": "--max-old-space-size=512"}
    proc = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
         str(location), "--skipApiVersionCheck", "--disableTelemetry", "--loose"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("Azurite did not start within 30 s")
    yield (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(location, ignore_errors=True)


@pytest.fixture
def azure_env(azurite: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point adlfs (``abfs://``) at Azurite for one test; yields a fresh container name."""
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    container = f"test{time.monotonic_ns()}"
    BlobServiceClient.from_connection_string(azurite).create_container(container)
    return container
