"""Opening GeoTIFFs from any storage URL, with errors that name the file and the problem."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError


class RasterError(ValueError):
    """A raster cannot be used: corrupt, truncated, missing, without CRS, wrong bands."""


def gdal_location(url: str) -> tuple[str, dict[str, str]]:
    """The GDAL path for a storage URL and the GDAL config options it needs.

    Azure URLs (``abfs://container/blob``, ``az://``) use GDAL's own ``/vsiaz/`` driver,
    which reads only the byte ranges a window needs, with credentials taken from the
    ``AZURE_STORAGE_*`` environment (never written to logs). HTTP(S) uses ``/vsicurl/``.
    """
    protocol, _, rest = url.partition("://")
    if not rest:
        return url, {}
    if protocol in ("abfs", "abfss", "az"):
        options = {}
        for gdal_key, env_key in (
            ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING"),
            ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME"),
            ("AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY"),
            ("AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_TOKEN"),
        ):
            if os.environ.get(env_key):
                options[gdal_key] = os.environ[env_key]
        container, _, blob = rest.partition("/")
        # abfs://container@account.dfs.core.windows.net/blob names the account inline.
        return f"/vsiaz/{container.split('@', 1)[0]}/{blob}", options
    if protocol in ("http", "https"):
        return f"/vsicurl/{url}", {}
    if protocol == "file":
        return rest, {}
    raise RasterError(f"cannot read rasters from {protocol}:// URLs ({url})")


@contextmanager
def open_raster(url: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster for windowed reading from a local path or a storage URL.

    Raises:
        RasterError: the file is missing, unreadable or has no CRS.
    """
    path, options = gdal_location(url)
    with rasterio.Env(**options):
        try:
            src = rasterio.open(path)
        except (RasterioIOError, OSError) as err:
            raise RasterError(f"cannot open raster {url}: {err}") from err
        try:
            if src.crs is None:
                raise RasterError(f"raster {url} has no CRS: it cannot be placed on the ground")
            yield src
        finally:
            src.close()


def read_checked(src: rasterio.DatasetReader, url: str, **kwargs: object) -> np.ndarray:
    """``src.read(**kwargs)`` with corrupt or truncated data reported as a RasterError."""
    try:
        return np.asarray(src.read(**kwargs))
    except RasterioIOError as err:
        raise RasterError(f"raster {url} is corrupt or truncated: {err}") from err
