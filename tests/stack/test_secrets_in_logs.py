"""No storage secret in any log, XCom or command line, with every logger at DEBUG.

``naip_dataset`` runs on a real deployment (api-server, scheduler with the LocalExecutor,
dag-processor, on PostgreSQL) whose county registry, NAIP scenes and NLCD rasters live on
Azurite, so the tasks read rasters through GDAL's ``/vsiaz/`` and write tiles through adlfs.
The storage credentials reach the components only through
``AZURE_STORAGE_CONNECTION_STRING``, in two variants, one run each (the components are
restarted in between):

* ``key``: a connection string with the account key;
* ``sas``: a connection string with an account SAS token and no key.

Airflow logs at DEBUG (``AIRFLOW__LOGGING__LOGGING_LEVEL``: the root logger, so rasterio,
adlfs, fsspec and the Azure SDK too) and GDAL prints its debug messages (``CPL_DEBUG=ON``).
Afterwards the account key, the SAS token (and its signature, encoded or not), both
connection strings and the deployment's database and broker passwords must appear nowhere:
not in any file under the Airflow home (task logs, DAG processor logs, the components'
stdout/stderr), not in the metadata DB (XCom values, rendered fields, every other table),
not in what the runs wrote to the store besides the images, not in this test's captured
output and logs, and not in the command line of any process the test started (sampled while
the runs went on).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import psutil
import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
)

COUNTIES = ["synthetic-county-1", "synthetic-county-2"]
YEARS = [2010, 2016]
DEBUG_ENV = {
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",
    "AIRFLOW__LOGGING__NAMESPACE_LEVELS": (
        "rasterio=DEBUG azure=DEBUG adlfs=DEBUG fsspec=DEBUG landuse=DEBUG landuse_airflow=DEBUG"),
    "CPL_DEBUG": "ON",
}
# Other DAGs the runs would schedule (training on the dataset Asset, the yearly refresh):
# paused, so that only naip_dataset runs.
OTHERS = "^(landuse_training|naip_refresh|change_detection)$"


def _forms(value: str) -> set[str]:
    """``value`` as it may be written: as is, URL-decoded, URL-encoded, JSON-escaped."""
    out = {value, unquote(value)}
    out |= {quote(v, safe=s) for v in tuple(out) for s in ("", "/")}
    out |= {json.dumps(v)[1:-1] for v in tuple(out)}
    return out


def _secrets(connection_string: str) -> dict[str, set[str]]:
    """Name -> the forms of each secret a connection string carries (and itself)."""
    fields = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    found = {"connection string": {connection_string}}
    if fields.get("AccountKey"):
        found["account key"] = _forms(fields["AccountKey"])
    if fields.get("SharedAccessSignature"):
        sas = fields["SharedAccessSignature"]
        found["SAS token"] = _forms(sas)
        found["SAS signature"] = _forms(parse_qs(sas)["sig"][0])
    return found


def _leaks(text: str, secrets: dict[str, set[str]]) -> list[str]:
    return sorted({name for name, forms in secrets.items() if any(f in text for f in forms)})


class CmdlineWatch(threading.Thread):
    """Records the command line of every descendant of this process, every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: dict[int, set[str]] = {}
        self.stopped = threading.Event()

    def sample(self) -> None:
        for proc in psutil.Process().children(recursive=True):
            try:
                self.seen.setdefault(proc.pid, set()).add("\0".join(proc.cmdline()))
            except psutil.Error:
                pass

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.sample()


def _upload_tree(service: BlobServiceClient, container: str, prefix: str, folder: Path) -> int:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for path in files:
        blob = f"{prefix}/{path.relative_to(folder).as_posix()}"
        service.get_blob_client(container, blob).upload_blob(path.read_bytes(), overwrite=True)
    return len(files)


def _run_dag(stack, conf: dict[str, object], count: int, timeout: float = 600) -> None:
    """Trigger naip_dataset and wait for it (the ``count``-th run) to succeed."""
    stack.cli("dags", "trigger", "naip_dataset", "-c", json.dumps(conf))
    runs = stack.wait_for_runs("naip_dataset", count, timeout)
    failed = [r["run_id"] for r in runs if r["state"] != "success"]
    if failed:
        tis = stack.cli("tasks", "states-for-dag-run", "naip_dataset", failed[0])
        logs = [p for p in sorted((stack.home / "logs").rglob("*.log")) if "task_id=" in str(p)]
        tail = (logs[-1] if logs else stack.home / "scheduler.log").read_text()[-4000:]
        pytest.fail(f"naip_dataset runs failed: {failed}\n{tis}\n{tail}")


@pytest.mark.azurite
@pytest.mark.timeout(1500)
def test_no_secret_in_logs_xcom_or_command_lines(
    airflow_stack, azurite: str, synthetic: Path, capfd, caplog
):
    caplog.set_level(logging.DEBUG)  # this process too: the uploads, the Azure SDK
    caplog.set_level(logging.DEBUG, logger="azure")
    stack = airflow_stack
    endpoint = azurite.split("BlobEndpoint=", 1)[1].split(";", 1)[0]
    account = azurite.split("AccountName=", 1)[1].split(";", 1)[0]
    key = azurite.split("AccountKey=", 1)[1].split(";", 1)[0]
    service = BlobServiceClient.from_connection_string(azurite)
    source, output = f"src{time.monotonic_ns()}", f"out{time.monotonic_ns()}"
    service.create_container(source)
    service.create_container(output)
    assert _upload_tree(service, source, "synthetic", synthetic) > 5
    sas = generate_account_sas(
        account, key, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                              create=True),
        expiry=datetime.now(UTC) + timedelta(hours=2))
    variants = {
        "key": azurite,
        "sas": f"BlobEndpoint={endpoint};SharedAccessSignature={sas}",
    }
    secrets: dict[str, set[str]] = {}
    for name, connection_string in variants.items():
        for what, forms in _secrets(connection_string).items():
            secrets[f"{what} ({name})"] = forms
    # The deployment's own: the metadata database's and the Celery broker's passwords.
    for what, variable in (("database password", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"),
                           ("broker password", "AIRFLOW__CELERY__BROKER_URL")):
        password = urlsplit(stack.env[variable]).password
        assert password
        secrets[what] = _forms(password)

    stack.cli("dags", "pause", OTHERS, "--treat-dag-id-as-regex", "-y")
    stack.env.update(DEBUG_ENV)
    watch = CmdlineWatch()
    watch.start()
    try:
        for count, (name, connection_string) in enumerate(variants.items(), start=1):
            stack.env["AZURE_STORAGE_CONNECTION_STRING"] = connection_string
            stack.up()
            conf = {"registry": f"abfs://{source}/synthetic/counties.json",
                    "counties": COUNTIES, "years": YEARS, "purity_threshold": 0.75,
                    "storage_root": f"abfs://{output}/{name}"}
            _run_dag(stack, conf, count)
            for component in list(stack.processes):  # flushes their logs; new env next
                stack.stop(component)
    finally:
        watch.stopped.set()
        watch.join(timeout=10)
        for component in list(stack.processes):
            stack.stop(component)
    watch.sample()

    # The runs read rasters through GDAL from Azurite, with DEBUG on, and wrote there.
    written = [b.name for b in service.get_container_client(output).list_blobs()]
    for name in variants:
        for county in COUNTIES:
            for year in YEARS:
                assert f"{name}/naip/{county}/{year}/manifest.parquet" in written, name
    tile_logs = [p for p in (stack.home / "logs").rglob("*.log") if "tile_county" in str(p)]
    assert tile_logs, sorted((stack.home / "logs").rglob("*"))
    tile_text = "\n".join(p.read_text(errors="replace") for p in tile_logs)
    assert "/vsiaz/" in tile_text and "debug" in tile_text.lower(), tile_text[-3000:]

    found: list[str] = []
    # Every file under the Airflow home: task and DAG-processor logs, components' output.
    files = [p for p in sorted(stack.home.rglob("*")) if p.is_file()]
    assert len(files) > 10
    for path in files:
        found += [f"{what} in {path}"
                  for what in _leaks(path.read_bytes().decode(errors="replace"), secrets)]
    # The metadata DB, every table (XCom values, rendered fields, run conf, ...).
    xcoms = stack.query("SELECT COUNT(*) FROM xcom")[0][0]
    tables = [t for (t,) in stack.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert "task_instance" in tables
    for table in tables:
        for row in stack.query(f'SELECT * FROM "{table}"'):
            text = "\n".join(bytes(v).decode(errors="replace")
                             if isinstance(v, bytes | memoryview) else str(v) for v in row)
            found += [f"{what} in the metadata DB table {table}"
                      for what in _leaks(text, secrets)]
    assert xcoms > 0  # the tasks' return values are there, and were searched
    # What the runs wrote besides the images: manifests, the split, summaries.
    container = service.get_container_client(output)
    for blob in written:
        if not blob.endswith(".png"):
            text = container.download_blob(blob).readall().decode(errors="replace")
            found += [f"{what} in abfs://{output}/{blob}" for what in _leaks(text, secrets)]
    # Command lines of every process the test started (components, tasks, Azurite).
    assert len(watch.seen) >= 4
    for pid, cmdlines in sorted(watch.seen.items()):
        for cmdline in cmdlines:
            found += [f"{what} in the command line of pid {pid} "
                      f"({cmdline.replace(chr(0), ' ')[:120]!r})"
                      for what in _leaks(cmdline, secrets)]
    # This test's own output and log records.
    out, err = capfd.readouterr()
    found += [f"{what} in the test's {where}"
              for where, text in (("stdout", out), ("stderr", err), ("log", caplog.text))
              for what in _leaks(text, secrets)]

    assert not found, "secrets found:\n" + "\n".join(sorted(set(found)))
