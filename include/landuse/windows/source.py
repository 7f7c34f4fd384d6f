"""Large images for sliding-window scoring: GeoTIFFs (georeferenced) or plain images.

Anything GDAL reads will do: a NAIP GeoTIFF on local disk or Azure Blob (through GDAL's
``/vsiaz/``, which fetches only the byte ranges a strip needs), or a PNG / JPEG / TIFF
without georeferencing (then outputs are in pixel coordinates and no GeoJSON can be made).
Windows are cut from the first three bands, taken as red, green, blue (NAIP's band order;
NIR, when present, is band 4 and not used by RGB models). Pixels equal to the nodata value
in all three bands, or outside a mask band (or an alpha band, except in GeoTIFFs: see
:class:`ImageSource`), are invalid; windows with too few valid pixels are not scored.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from landuse.raster import RasterError, gdal_call, gdal_location, read_checked

RGB = (1, 2, 3)


class ImageSource:
    """An open image: its size, georeferencing, and strips of RGB rows on demand."""

    def __init__(self, url: str, dataset: Any) -> None:
        self.url = url
        self._src = dataset
        if dataset.count < 3 or any(dataset.dtypes[i - 1] != "uint8" for i in RGB):
            raise RasterError(
                f"image {url} has {dataset.count} {dataset.dtypes[0]} band(s): sliding-window "
                "scoring needs 8-bit red, green and blue bands (1-3)"
            )
        flags = [dataset.mask_flag_enums[i - 1] for i in RGB]
        self._nodata = dataset.nodata
        # Nodata values are tested on the pixels already read (no second read); a mask band
        # is read; an alpha band only outside GeoTIFF: GDAL tags a 4-band 8-bit GeoTIFF's
        # 4th band as alpha by default, and in NAIP that band is near-infrared (a dark pond
        # is not a hole). Images with none of these are all valid.
        alpha = dataset.driver != "GTiff"
        self._mask_band = self._nodata is None and any(
            MaskFlags.per_dataset in f and (alpha or MaskFlags.alpha not in f) for f in flags
        )

    @property
    def height(self) -> int:
        """Pixel rows."""
        return int(self._src.height)

    @property
    def width(self) -> int:
        """Pixel columns."""
        return int(self._src.width)

    @property
    def georeferenced(self) -> bool:
        """Whether the image has a CRS (and so a place on the ground)."""
        return self._src.crs is not None

    @property
    def crs(self) -> Any:
        """The rasterio CRS, or None."""
        return self._src.crs

    @property
    def transform(self) -> Any:
        """The affine pixel-to-CRS transform (identity for an image without georeferencing)."""
        return self._src.transform

    def read_bands(self, row0: int, row1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixel rows ``[row0, row1)`` as GDAL reads them, (3, rows, width) uint8 red, green,
        blue, and a validity mask (rows, width) bool, or None when every pixel is valid.

        Raises:
            RasterError: the rows cannot be read (corrupt or truncated file).
        """
        window = Window(0, row0, self.width, row1 - row0)
        bands = read_checked(self._src, self.url, indexes=list(RGB), window=window)
        valid: np.ndarray | None = None
        if self._nodata is not None:
            valid = (bands != np.uint8(self._nodata)).any(axis=0)
        elif self._mask_band:
            valid = gdal_call(self.url, f"image {self.url}: cannot read its mask",
                              lambda: np.asarray(self._src.dataset_mask(window=window)) > 0)
        if valid is not None and valid.all():  # spares scoring the per-window valid shares
            valid = None
        return bands, valid

    def read_rows(self, row0: int, row1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """As :meth:`read_bands`, the pixels as (rows, width, 3) uint8 RGB."""
        bands, valid = self.read_bands(row0, row1)
        return np.ascontiguousarray(bands.transpose(1, 2, 0)), valid


@contextmanager
def open_image(url: str) -> Iterator[ImageSource]:
    """Open an image for strip reads from a local path or storage URL.

    Raises:
        RasterError: missing or unreadable, or not three 8-bit bands.
    """
    path, options = gdal_location(url)
    with rasterio.Env(**options):
        with warnings.catch_warnings():  # a plain image is fine here
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = gdal_call(url, f"cannot open image {url}", lambda: rasterio.open(path))
        try:
            yield ImageSource(url, src)
        finally:
            src.close()
