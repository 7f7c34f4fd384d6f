"""Opening GeoTIFFs from any storage URL, with errors that name the file and the problem.

Bad content (corrupt, truncated, missing, no CRS) is a :class:`RasterError` at once;
storage that cannot be reached is retried, then :class:`~landuse.storage.StorageUnavailable`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError  # GDAL's errors raised as they are (no public name)
from rasterio.errors import RasterioIOError

from landuse import storage

T = TypeVar("T")


class RasterError(ValueError):
    """A raster cannot be used: corrupt, truncated, missing, without CRS, wrong bands."""


# GDAL's own HTTP settings for remote rasters. GDAL retries HTTP 429/5xx answers itself,
# with growing delays; nothing here is a secret, so rasterio may log it. No cross-handle cache
# for blob paths: GDAL would otherwise remember a failed request (a scene that "does not
# exist" while storage was down) for the rest of the process, and no retry could succeed.
_REMOTE_OPTIONS = {
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    "CPL_VSIL_CURL_NON_CACHED": "/vsiaz/:/vsicurl/",
}
# Opening a blob would otherwise list its folder and probe side-car files (.aux.xml, .msk,
# .ovr, ...): requests of their own, each retried under throttling. A scene's overviews and
# masks are inside the GeoTIFF; nothing beside a raster is read.
OPEN_ONCE = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.png,.jpg,.jpeg,.jp2,.img,.vrt",
}
_REMOTE_OPTIONS.update(OPEN_ONCE)
# The project's (adlfs-style) credential variables and the names GDAL reads itself.
_GDAL_ENV_NAMES = {
    "AZURE_STORAGE_ACCOUNT": "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCESS_KEY": "AZURE_STORAGE_ACCOUNT_KEY",
}


# GDAL's debug output (CPL_DEBUG) prints signed request URLs, and rasterio passes it on to
# Python logging: whatever else is logged, a SAS signature or account key never is.
_SECRETS = re.compile(
    r"((?:^|[?&\s])sig=|AccountKey=|SharedAccessSignature=|Authorization:\s*)[^&;\s'\"]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with SAS signatures, account keys and authorization headers replaced."""
    return _SECRETS.sub(r"\1REDACTED", text)


class RedactSecrets(logging.Filter):
    """Replace SAS signatures, account keys and authorization headers in log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRETS.sub(r"\1REDACTED", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


for _name in ("rasterio._env", "rasterio._err", "rasterio._io", "rasterio._base", "rasterio"):
    logging.getLogger(_name).addFilter(RedactSecrets())


def gdal_location(url: str) -> tuple[str, dict[str, str]]:
    """The GDAL path for a storage URL and the (non-secret) GDAL config options it needs.

    Azure URLs (``abfs://container/blob``, ``az://``) use GDAL's own ``/vsiaz/`` driver,
    which reads only the byte ranges a window needs. GDAL takes the credentials from the
    process environment (``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_SAS_TOKEN``,
    or account and key, copied under GDAL's names when only the project's are set), never
    from config options: ``rasterio.Env`` logs those at DEBUG level. HTTP(S) uses
    ``/vsicurl/``, anonymous unless a signer is registered for the URL
    (:func:`landuse.storage.register_signer`).
    """
    protocol, _, rest = url.partition("://")
    if not rest:
        return url, {}
    if protocol in ("abfs", "abfss", "az"):
        for gdal_name, ours in _GDAL_ENV_NAMES.items():
            if os.environ.get(ours) and not os.environ.get(gdal_name):
                os.environ[gdal_name] = os.environ[ours]
        container, _, blob = rest.partition("/")
        # abfs://container@account.dfs.core.windows.net/blob names the account inline.
        return f"/vsiaz/{container.split('@', 1)[0]}/{blob}", dict(_REMOTE_OPTIONS)
    if protocol in ("http", "https"):
        # Public containers need no signature; a catalogue's signer (the Planetary
        # Computer's SAS token) is applied here, at open time: each open gets a live token.
        return f"/vsicurl/{storage.signed(url)}", dict(_REMOTE_OPTIONS)
    if protocol == "file":
        return rest, {}
    raise RasterError(f"cannot read rasters from {protocol}:// URLs ({url})")


def gdal_call(url: str, what: str, call: Callable[[], T]) -> T:
    """Run a GDAL open or read of ``url``, telling storage trouble from bad content.

    A failure on remote storage is storage trouble when GDAL's own message says so (a curl
    error, HTTP 408/429/5xx) or, since GDAL often reports a refused connection like a
    missing or corrupt file, when a direct check finds the storage unreachable. Storage
    trouble is :class:`~landuse.storage.StorageUnavailable`, retried with back-off here
    (and by the orchestrator after that); anything else is the file's fault, a
    :class:`RasterError` at once.
    """

    def once() -> T:
        try:
            return call()
        except (RasterioIOError, CPLE_BaseError, OSError) as err:
            # GDAL names the signed URL it opened: keep the signature out of the message
            # and, by not chaining the original error, out of printed tracebacks.
            message = redact(str(err))
            cause = err if message == str(err) else None
            if "://" in url and not url.startswith("file://"):
                if _network_failure(err):
                    raise storage.StorageUnavailable(f"{what}: {message}") from cause
                storage.check_reachable(url)  # raises StorageUnavailable while it is down
            raise RasterError(f"{what}: {message}") from cause

    return storage.with_retries(what, once)


# How GDAL words failures of the network rather than of the file (curl errors, HTTP status
# codes that mean "not now"; code 0 is "no response").
_NETWORK_FAILURE = re.compile(
    r"CURL error|HTTP response code(?: on \S+)?:? (?:0|408|429|5\d\d)\b"
    r"|Connection (?:refused|reset)"
    r"|timed out",
    re.IGNORECASE,
)


def _network_failure(err: BaseException) -> bool:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        if _NETWORK_FAILURE.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def open_raster(url: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster for windowed reading from a local path or a storage URL.

    Raises:
        RasterError: the file is missing, unreadable or has no CRS.
    """
    path, options = gdal_location(url)
    with rasterio.Env(**options):
        src = gdal_call(url, f"cannot open raster {url}", lambda: rasterio.open(path))
        try:
            if src.crs is None:
                raise RasterError(f"raster {url} has no CRS: it cannot be placed on the ground")
            yield src
        finally:
            src.close()


def read_checked(src: rasterio.DatasetReader, url: str, **kwargs: object) -> np.ndarray:
    """``src.read(**kwargs)`` with corrupt or truncated data reported as a RasterError, and
    reads that fail because storage is unavailable retried (see :func:`gdal_call`)."""
    return gdal_call(url, f"raster {url} is corrupt or truncated",
                     lambda: np.asarray(src.read(**kwargs)))
