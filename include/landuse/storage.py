"""One code path for local folders and blob storage: every location is an fsspec URL.

Plain paths are local; ``abfs://container/path`` is Azure Blob / ADLS through adlfs, with
credentials from the usual ``AZURE_STORAGE_*`` environment variables (a connection string,
or account name plus key / SAS token). Writes are atomic: a local file is written to a
temporary name and renamed; a blob is uploaded in one request, so readers see the old
object or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class StorageError(RuntimeError):
    """A storage location is unreachable, missing or not usable; the message names it."""


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


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
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


def exists(url: str) -> bool:
    """Whether an object or folder exists at ``url``."""
    fs, path = filesystem(url)
    try:
        return bool(fs.exists(path))
    except Exception as err:  # network errors come in many types; name the URL
        raise StorageError(f"cannot reach {url}: {err}") from err


def read_bytes(url: str) -> bytes:
    """Read a whole object."""
    fs, path = filesystem(url)
    try:
        return bytes(fs.cat_file(path))
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
        try:
            fs.pipe_file(path, data)
        except Exception as err:  # the SDK's errors name the host, not the object
            raise StorageError(f"cannot write {url}: {err}") from err


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


def write_folder(url: str, files: dict[str, bytes], commit: str) -> None:
    """Publish a folder of files as one unit; ``commit`` is the file that says it is whole.

    Locally the files go to a temporary sibling folder that then replaces ``url`` by rename.
    On blob storage every file is one atomic upload and ``commit`` goes last, so a reader
    that looks for it first never sees a half-written folder; files of an earlier version
    that the new one lacks are deleted first (after its ``commit``).
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
        stale = [p for p in existing if p.removeprefix(f"{folder}/") not in files]
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
        old = f"{tmp}.old"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        found = sorted(fs.glob(path))
    except FileNotFoundError:
        return []
    except Exception as err:
        raise StorageError(f"cannot list {pattern}: {err}") from err
    if isinstance(fs, LocalFileSystem):
        return list(found)
    protocol = pattern.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in found]
