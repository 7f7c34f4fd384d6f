"""NLCD land cover brought onto the imagery's grid.

NLCD is a 30 m raster in CONUS Albers (EPSG:5070); NAIP is 0.6–1 m in UTM. Labels are
therefore reprojected (nearest neighbour, so codes stay codes) onto a label grid aligned
with the tile grid, once per scene, reading only the part of the NLCD raster that the
scene covers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError, WarpOperationError
from rasterio.warp import reproject, transform_bounds

from landuse import labels, storage
from landuse.raster import RasterError, gdal_call, open_raster

_VINTAGE = re.compile(r"nlcd_(\d{4})", re.IGNORECASE)


@dataclass(frozen=True)
class NlcdSource:
    """NLCD rasters by vintage year; the vintage nearest a NAIP year labels it."""

    vintages: dict[int, str]

    @classmethod
    def from_url(cls, url: str) -> NlcdSource:
        """A single NLCD raster, or a folder of ``nlcd_YYYY*.tif`` rasters (one per vintage).

        Raises:
            ValueError: nothing usable was found at ``url``.
        """
        if url.lower().endswith((".tif", ".tiff", ".img", ".vrt")):
            match = _VINTAGE.search(url.rsplit("/", 1)[-1])
            return cls({int(match[1]) if match else 0: url})
        vintages: dict[int, str] = {}
        for found in storage.glob(storage.join(url, "*.tif")):
            match = _VINTAGE.search(found.rsplit("/", 1)[-1])
            if match:
                vintages[int(match[1])] = found
        if not vintages:
            raise ValueError(f"no NLCD rasters named nlcd_YYYY*.tif under {url}")
        return cls(vintages)

    def for_year(self, year: int) -> str:
        """URL of the vintage closest to ``year`` (the earlier one on a tie)."""
        return self.vintages[min(self.vintages, key=lambda v: (abs(v - year), v))]


def read_labels(url: str, crs: CRS, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """NLCD codes resampled (nearest) onto a target grid, as uint16; 0 where NLCD has no data.

    Raises:
        RasterError: the raster cannot be read, has no CRS, holds no integer codes, or does
            not overlap the grid.
    """
    height, width = shape
    west, north = transform @ (0, 0)
    east, south = transform @ (width, height)
    bounds = (min(west, east), min(south, north), max(west, east), max(south, north))
    out = np.zeros(shape, dtype=np.uint16)
    with open_raster(url) as src:
        if src.dtypes[0] not in ("uint8", "int16", "uint16", "int32", "uint32"):
            raise RasterError(
                f"NLCD raster {url} holds {src.dtypes[0]} values, not integer class codes"
            )
        left, bottom, right, top = transform_bounds(crs, src.crs, *bounds)
        sb = src.bounds
        if left >= sb.right or right <= sb.left or bottom >= sb.top or top <= sb.bottom:
            raise RasterError(
                f"NLCD raster {url} does not overlap the imagery (grid bounds "
                f"{tuple(round(b, 1) for b in bounds)} in {crs})"
            )

        def warp() -> None:  # GDAL's warper reads only the source blocks the grid needs
            try:
                reproject(
                    source=rasterio.band(src, 1),
                    destination=out,
                    src_nodata=src.nodata,
                    dst_transform=transform,
                    dst_crs=crs,
                    dst_nodata=0,
                    resampling=Resampling.nearest,
                )
            except WarpOperationError as err:  # a truncated or unreachable block
                raise RasterioIOError(str(err)) from err

        gdal_call(url, f"NLCD raster {url} is corrupt or truncated", warp)
    out[np.isin(out, list(labels.NLCD_NODATA))] = 0
    return out
