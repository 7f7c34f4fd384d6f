"""One code path for local folders and blob storage: every location is an fsspec URL.

Plain paths are local; ``abfs://container/path`` is Azure Blob / ADLS through adlfs, with
credentials from the usual ``AZURE_STORAGE_*`` environment variables (a connection string,
or account name plus key / SAS token). A public container's HTTPS URL
(``https://naipeuwest.blob.core.windows.net/naip/...``) is read anonymously
(:func:`public_blob_endpoint`); other HTTP(S) URLs are plain HTTP, signed when read if a
catalogue registered a signer for them (:func:`register_signer`).

Writes are atomic: a local file is written to a temporary name and renamed; a blob is
uploaded in one request, so readers see the old object or the new one, never half of one.

Failures are told apart by what happened, not by exception class: storage that cannot be
reached, times out or throttles (HTTP 408/429/5xx, refused or reset connections) is
*unavailable* (:func:`is_transient`); reads retry it with bounded exponential back-off and
jitter (tenacity) and then raise :class:`StorageUnavailable`, which an orchestrator should
retry later. A missing object is a :class:`StorageError`; bad content is the reader's
``ValueError``; neither heals on retry.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import tenacity
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
T = TypeVar("T")


class StorageError(RuntimeError):
    """A storage location is unreachable, missing or not usable; the message names it."""


class StorageUnavailable(StorageError):
    """Storage could not be reached, timed out or throttled the request: trying again later
    may succeed (the library already retried with back-off)."""


# HTTP statuses that say "not now" rather than "no": timeout, throttling, server trouble.
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says storage was unreachable, timed
    out or throttled, as opposed to a missing object or bad content."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageUnavailable):
            return True
        if isinstance(current, ConnectionError | TimeoutError):  # refused, reset, timed out
            return True
        status = getattr(current, "status_code", None) or getattr(current, "status", None)
        if isinstance(status, int) and status in TRANSIENT_HTTP:
            return True
        if type(current).__name__ in _TRANSIENT_NAMES | {"ConnectionError"}:
            return True
        current = current.__cause__ or current.__context__
    return False


# By name, so that this module needs neither azure-core nor aiohttp to be importable:
# azure-core's errors for a request that could not be sent or whose response never came,
# and aiohttp's connection errors (adlfs runs on it).
_TRANSIENT_NAMES = frozenset({
    "ServiceRequestError", "ServiceResponseError", "ServiceRequestTimeoutError",
    "ServiceResponseTimeoutError", "ClientConnectionError", "ClientConnectorError",
    "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError", "FSTimeoutError",
    "ConnectTimeout", "ReadTimeout",  # requests' (its ConnectionError is caught by name too)
})


def retry_policy(what: str = "storage call") -> tenacity.Retrying:
    """Bounded exponential back-off with jitter for transient storage errors; each retry is
    logged with ``what`` was being done (the object it names), whatever the error says.

    ``LANDUSE_STORAGE_RETRIES`` attempts in all (default 6), waits of 1, 2, 4, ... s plus up
    to 1 s of jitter (so that many workers do not come back at once), each capped at
    ``LANDUSE_STORAGE_RETRY_MAX_WAIT_S`` (default 30 s): about half a minute of outage is
    ridden out inside a task before it fails and the orchestrator's retries take over.
    """
    attempts = int(os.environ.get("LANDUSE_STORAGE_RETRIES", "6"))
    max_wait = float(os.environ.get("LANDUSE_STORAGE_RETRY_MAX_WAIT_S", "30"))
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_exponential_jitter(initial=min(1.0, max_wait), max=max_wait,
                                              jitter=min(1.0, max_wait)),
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        before_sleep=lambda state: _log_retry(what, state),
        reraise=True,
    )


def _log_retry(what: str, state: tenacity.RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome else None
    log.warning("storage unavailable (attempt %d), retrying in %.1f s: %s: %s",
                state.attempt_number, state.upcoming_sleep, what, err)


def with_retries(what: str, call: Callable[[], T]) -> T:
    """``call()`` retried on transient storage errors; when they outlast the retries, a
    :class:`StorageUnavailable` naming ``what``. Other errors pass through at once."""
    try:
        return retry_policy(what)(call)
    except Exception as err:
        if is_transient(err) and not isinstance(err, StorageUnavailable):
            raise StorageUnavailable(f"{what}: storage unavailable ({err})") from err
        raise


def storage_options(url: str) -> dict[str, Any]:
    """Credentials for ``url`` taken from the environment (never from code or logs)."""
    if not url.startswith(("abfs://", "az://", "abfss://")):
        return {}
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        return {"connection_string": conn}
    options: dict[str, Any] = {}
    for key, env in (
        ("account_name", "AZURE_STORAGE_ACCOUNT_NAME"),
        ("account_key", "AZURE_STORAGE_ACCOUNT_KEY"),
        ("sas_token", "AZURE_STORAGE_SAS_TOKEN"),
    ):
        if os.environ.get(env):
            options[key] = os.environ[env]
    return options


def check_reachable(url: str) -> None:
    """Raise :class:`StorageUnavailable` when the store behind a remote ``url`` cannot be
    reached or throttles right now; return when it answers, whether or not the object
    exists. One request, no retries and short timeouts: this decides what a failure was.
    """
    protocol, _, rest = url.partition("://")
    try:
        if protocol in ("abfs", "abfss", "az"):
            _blob_client(rest).get_blob_properties()
        elif protocol in ("http", "https"):
            import requests

            response = requests.head(url, timeout=(5, 10), allow_redirects=True)
            if response.status_code in TRANSIENT_HTTP:
                raise StorageUnavailable(f"{url} answered HTTP {response.status_code}")
    except Exception as err:
        if is_transient(err):
            raise StorageUnavailable(f"cannot reach {url}: {err}") from err
        # Any other answer (403, 404, ...) came from a store that is up.


def _blob_client(location: str) -> Any:
    """A synchronous Azure blob client for ``container[@account...]/blob`` that neither
    retries nor waits long, with credentials from the environment."""
    from azure.storage.blob import BlobClient

    container, _, blob = location.partition("/")
    container, _, host = container.partition("@")
    quick: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10}
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        return BlobClient.from_connection_string(conn, container, blob, **quick)
    account = host.split(".", 1)[0] or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")
    credential = (os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
                  or os.environ.get("AZURE_STORAGE_SAS_TOKEN") or None)
    return BlobClient(f"https://{account}.blob.core.windows.net", container, blob,
                      credential=credential, **quick)


# URL prefix -> function returning the URL with a (short-lived) signature, registered by a
# catalogue whose assets need one (the Planetary Computer's SAS tokens). URLs are signed
# only when read, so manifests and logs keep the plain URL.
_SIGNERS: dict[str, Callable[[str], str]] = {}


def register_signer(prefix: str, sign: Callable[[str], str]) -> None:
    """Sign every HTTP(S) URL starting with ``prefix`` with ``sign`` when it is read."""
    _SIGNERS[prefix] = sign


def signed(url: str) -> str:
    """``url`` signed by the signer registered for its longest matching prefix, if any."""
    prefixes = [p for p in _SIGNERS if url.startswith(p)]
    return _SIGNERS[max(prefixes, key=len)](url) if prefixes else url


# Public Azure Blob containers are read anonymously over HTTPS: the account's endpoint is
# ``https://{account}.blob.core.windows.net``; others (an emulator, another cloud) are listed
# in LANDUSE_PUBLIC_BLOB_ENDPOINTS. Nothing signs these requests, whatever the environment holds.
_AZURE_ENDPOINT = re.compile(r"^https://[a-z0-9]{3,24}\.blob\.core\.windows\.net(?=/)")


def public_blob_endpoint(url: str) -> str | None:
    """The blob service endpoint when ``url`` lies in a public (anonymous) Azure Blob
    container, e.g. ``https://naipeuwest.blob.core.windows.net`` for
    ``https://naipeuwest.blob.core.windows.net/naip/v002/...``; else None.

    Endpoints other than ``*.blob.core.windows.net`` (Azurite, sovereign clouds) are named in
    ``LANDUSE_PUBLIC_BLOB_ENDPOINTS`` (comma-separated, e.g.
    ``http://127.0.0.1:10000/devstoreaccount1``).
    """
    if any(url.startswith(p) for p in _SIGNERS):
        return None  # a signed URL is read over plain HTTP(S) with its signature
    match = _AZURE_ENDPOINT.match(url)
    if match:
        return match.group(0)
    for endpoint in os.environ.get("LANDUSE_PUBLIC_BLOB_ENDPOINTS", "").split(","):
        endpoint = endpoint.strip().rstrip("/")
        if endpoint and url.startswith(endpoint + "/"):
            return endpoint
    return None


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it (a public Azure container
    through adlfs without credentials; a signed URL over HTTP with its signature)."""
    endpoint = public_blob_endpoint(url)
    if endpoint is not None:
        # A connection string with an endpoint and no key or token: anonymous requests.
        fs = fsspec.filesystem("abfs", connection_string=f"BlobEndpoint={endpoint};")
        return fs, url[len(endpoint) + 1:]
    fs, path = fsspec.core.url_to_fs(signed(url), **storage_options(url))
    return fs, path


def is_local(url: str) -> bool:
    """Whether ``url`` names the local filesystem."""
    return isinstance(filesystem(url)[0], LocalFileSystem)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL with '/', whatever the filesystem."""
    out = url.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def safe_name(name: str, what: str = "county") -> str:
    """Check that ``name`` can be used as one path segment under the storage root.

    Raises:
        ValueError: the name is empty, has path separators or '..', or other characters
            that could escape the storage root or clash on case-insensitive stores.
    """
    if not _SAFE_NAME.fullmatch(name):  # fullmatch: '$' alone would let 'name\n' through
        raise ValueError(
            f"{what} name {name!r} is not allowed: it would escape or clash under the storage "
            "root; use 1-63 lowercase letters, digits, '-' and '_', starting with a letter or "
            "digit"
        )
    return name


def run_segment(run_id: str) -> str:
    """An Airflow run id (``manual__2026-12-02T07:09:44+00:00``) as one path segment: every
    run of characters other than letters, digits, '_', '.' and '-' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"


def exists(url: str) -> bool:
    """Whether an object or folder exists at ``url``."""
    fs, path = filesystem(url)
    try:
        return with_retries(f"cannot reach {url}", lambda: bool(fs.exists(path)))
    except StorageUnavailable:
        raise
    except Exception as err:  # network errors come in many types; name the URL
        raise StorageError(f"cannot reach {url}: {err}") from err


def read_bytes(url: str) -> bytes:
    """Read a whole object (retried while storage is unavailable)."""
    fs, path = filesystem(url)
    try:
        return with_retries(f"cannot read {url}", lambda: bytes(fs.cat_file(path)))
    except FileNotFoundError as err:
        raise StorageError(f"{url} does not exist") from err


def size(url: str) -> int:
    """Size of an object in bytes (retried while storage is unavailable)."""
    fs, path = filesystem(url)
    try:
        return int(with_retries(f"cannot reach {url}", lambda: fs.size(path)))
    except FileNotFoundError as err:
        raise StorageError(f"{url} does not exist") from err


def write_bytes(url: str, data: bytes) -> None:
    """Write an object atomically (local: temp file + rename; blob: one upload)."""
    if "://" not in url:  # the hot path of tiling: skip fsspec for plain local paths
        fs, path = LocalFileSystem(), url
    else:
        fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs are shared data
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        try:  # the Azure SDK retries a failed upload itself; a second loop would only wait
            fs.pipe_file(path, data)
        except Exception as err:  # the SDK's errors name the host, not the object
            kind = StorageUnavailable if is_transient(err) else StorageError
            raise kind(f"cannot write {url}: {err}") from err


def remove_temporaries(url: str) -> int:
    """Delete the temporary files a killed writer left in a local folder (``.tmp-*``, see
    :func:`write_bytes`); blob uploads leave none. Returns how many were deleted."""
    if "://" in url and not url.startswith("file://"):
        return 0
    path = url.removeprefix("file://")
    if not os.path.isdir(path):
        return 0
    stale = [e.path for e in os.scandir(path) if e.name.startswith(".tmp-") and e.is_file()]
    for tmp in stale:
        os.unlink(tmp)
    return len(stale)


def write_folder(url: str, files: dict[str, bytes], commit: str,
                 keep: tuple[str, ...] = ()) -> None:
    """Publish a folder of files as one unit; ``commit`` is the file that says it is whole.

    Locally the files go to a temporary sibling folder that then replaces ``url`` by rename.
    On blob storage every file is one atomic upload and ``commit`` goes last, so a reader
    that looks for it first never sees a half-written folder; files of an earlier version
    that the new one lacks are deleted first (after its ``commit``). The subfolders named in
    ``keep`` (others' records, such as a report's reviews) survive a republish whole,
    including files written into them while it ran.
    """
    if commit not in files:
        raise ValueError(f"commit file {commit} is not among the files for {url}")
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        folder = path.rstrip("/")
        if fs.exists(f"{folder}/{commit}"):
            fs.rm(f"{folder}/{commit}")  # being rewritten: not whole until the new marker
        try:
            existing = fs.find(folder)
        except FileNotFoundError:
            existing = []
        kept = tuple(f"{folder}/{k.strip('/')}/" for k in keep)
        stale = [p for p in existing if p.removeprefix(f"{folder}/") not in files
                 and not p.startswith(kept)]
        if stale:  # a rerun replaces the folder, as it does locally
            fs.rm(stale)
        for name in sorted(files, key=lambda n: n == commit):
            fs.pipe_file(f"{folder}/{name}", files[name])
        return
    parent = os.path.dirname(path.rstrip("/")) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(path)}-")
    try:
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        os.chmod(tmp, 0o755)
        for sub in keep:
            _copy_missing(os.path.join(path, sub), os.path.join(tmp, sub))
        old = f"{tmp}.old"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        for sub in keep:  # what was written into them since the first copy
            _copy_missing(os.path.join(old, sub), os.path.join(path, sub))
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_missing(src: str, dst: str) -> None:
    """Copy the files under ``src`` that ``dst`` lacks (kept subfolders of a republish)."""
    for folder, _, names in os.walk(src):
        target = os.path.join(dst, os.path.relpath(folder, src))
        os.makedirs(target, exist_ok=True)
        for name in names:
            if not os.path.exists(os.path.join(target, name)):
                shutil.copy2(os.path.join(folder, name), os.path.join(target, name))


def write_parquet(url: str, table: pa.Table) -> None:
    """Write a Parquet table atomically."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(url, buf.getvalue())


def read_parquet(url: str) -> pa.Table:
    """Read a Parquet table written by :func:`write_parquet`."""
    return pq.read_table(io.BytesIO(read_bytes(url)))


def glob(pattern: str) -> list[str]:
    """URLs matching a glob pattern, sorted, with the protocol of ``pattern`` kept."""
    fs, path = filesystem(pattern)
    try:
        found = sorted(with_retries(f"cannot list {pattern}", lambda: fs.glob(path)))
    except FileNotFoundError:
        return []
    except StorageUnavailable:
        raise
    except Exception as err:
        raise StorageError(f"cannot list {pattern}: {err}") from err
    if isinstance(fs, LocalFileSystem):
        return list(found)
    endpoint = public_blob_endpoint(pattern)
    if endpoint is not None:
        return [f"{endpoint}/{p}" for p in found]
    protocol = pattern.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in found]
