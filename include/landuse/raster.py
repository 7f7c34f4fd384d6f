"""Opening GeoTIFFs from any storage URL, with errors that name the file and the problem."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from landuse import storage


class RasterError(ValueError):
    """A raster cannot be used: corrupt, truncated, missing, without CRS, wrong bands."""


@contextmanager
def open_raster(url: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster for windowed reading, locally or through fsspec (``abfs://`` etc.).

    Remote files are read with range requests through rasterio's ``opener``, so only the
    header and the blocks a window touches are fetched.

    Raises:
        RasterError: the file is missing, unreadable or has no CRS.
    """
    fs, path = storage.filesystem(url)
    try:
        if storage.is_local(url):
            src = rasterio.open(path)
        else:
            src = rasterio.open(path, opener=fs.open)
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
