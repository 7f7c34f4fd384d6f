"""NLCD land cover brought onto the imagery's grid.

NLCD is a 30 m raster in CONUS Albers (EPSG:5070); NAIP is 0.6–1 m in UTM. Labels are
therefore reprojected (nearest neighbour, so codes stay codes) onto a label grid aligned
with the tile grid, once per scene, reading only the part of the NLCD raster that the
scene covers.

Real downloads sometimes carry a wrong CRS (an Albers definition without NLCD's origin,
say). A raster whose footprint, in its own CRS, lies outside the United States that NLCD
covers is refused with an error naming the file; ``nlcd_crs`` (a county's registry entry,
the ``naip_dataset`` Param or ``landuse tiles --nlcd-crs``) overrides the embedded CRS.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioIOError, WarpOperationError
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds

from landuse import labels, storage
from landuse.raster import RasterError, gdal_call, open_raster

_VINTAGE = re.compile(r"nlcd_(\d{4})", re.IGNORECASE)
# West, south, east, north (degrees) of what NLCD maps: CONUS, Alaska, Hawaii, Puerto Rico.
NLCD_EXTENT = (-180.0, 17.0, -64.0, 72.0)


def parse_crs(value: str, what: str = "nlcd_crs") -> CRS:
    """A CRS from an EPSG code, PROJ string or WKT.

    Raises:
        ValueError: ``value`` names no CRS.
    """
    try:
        return CRS.from_user_input(value)
    except CRSError as err:
        raise ValueError(f"{what} {value!r} is not a coordinate reference system: {err}") from err


def check_placement(url: str, crs: CRS, bounds: tuple[float, float, float, float]) -> None:
    """Refuse an NLCD raster whose footprint lies outside the area NLCD covers.

    Raises:
        RasterError: naming the file, where it lands and how to override its CRS.
    """
    try:
        west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
    except Exception as err:  # PROJ cannot even place it
        raise RasterError(f"NLCD raster {url}: its CRS cannot be transformed to longitude and "
                          f"latitude ({err}); set nlcd_crs to its true CRS") from err
    w, s, e, n = NLCD_EXTENT
    if east < w or west > e or north < s or south > n:
        raise RasterError(
            f"NLCD raster {url} lands at {west:.2f}..{east:.2f} E, {south:.2f}..{north:.2f} N "
            f"with its embedded CRS, outside the United States that NLCD maps: the CRS is "
            "probably wrong. Set nlcd_crs to the true one (NLCD's CONUS Albers is EPSG:5070)"
        )


@dataclass(frozen=True)
class NlcdInfo:
    """What an NLCD raster holds (see :func:`describe`)."""

    url: str
    crs: str
    bounds_wgs84: tuple[float, float, float, float]
    shape: tuple[int, int]
    codes: tuple[int, ...]
    nodata: int | None
    colormap: dict[int, tuple[int, int, int, int]]


def describe(url: str, nlcd_crs: str | None = None, max_side: int = 2048) -> NlcdInfo:
    """The codes, no-data value, colour table and footprint of an NLCD raster.

    Codes come from a nearest-neighbour read at most ``max_side`` pixels a side (NLCD for
    all of CONUS is 160,000 px wide). The no-data value and its cells are left out of them.

    Raises:
        RasterError: unreadable, not integer codes, or placed outside the United States.
        ValueError: ``nlcd_crs`` is not a CRS.
    """
    crs_override = parse_crs(nlcd_crs) if nlcd_crs else None
    with open_raster(url) as src:
        crs = crs_override or src.crs
        check_placement(url, crs, tuple(src.bounds))
        if src.dtypes[0] not in _INTEGER_TYPES:
            raise RasterError(f"NLCD raster {url} holds {src.dtypes[0]} values, not codes")
        scale = max(1.0, max(src.height, src.width) / max_side)
        out_shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        codes = gdal_call(url, f"NLCD raster {url} is corrupt or truncated",
                          lambda: src.read(1, out_shape=out_shape,
                                           resampling=Resampling.nearest))
        nodata = None if src.nodata is None else int(src.nodata)
        found = sorted(int(c) for c in np.unique(codes) if c != nodata)
        try:
            colormap = {int(k): tuple(v) for k, v in src.colormap(1).items()}
        except ValueError:  # no colour table
            colormap = {}
        return NlcdInfo(url, crs.to_string(), transform_bounds(crs, "EPSG:4326", *src.bounds),
                        (src.height, src.width), tuple(found), nodata, colormap)


_INTEGER_TYPES = ("uint8", "int16", "uint16", "int32", "uint32")


@dataclass(frozen=True)
class NlcdSource:
    """NLCD rasters by vintage year; the vintage nearest a NAIP year labels it."""

    vintages: dict[int, str]
    crs: str | None = None  # overrides the rasters' embedded CRS (see nlcd_crs)

    @classmethod
    def from_url(cls, url: str, crs: str | None = None) -> NlcdSource:
        """A single NLCD raster, or a folder of ``nlcd_YYYY*.tif`` rasters (one per vintage).

        Args:
            url: the raster or folder.
            crs: the rasters' true CRS, when their embedded one is wrong.

        Raises:
            ValueError: nothing usable was found at ``url``, or ``crs`` is not a CRS.
        """
        if crs:
            parse_crs(crs)
        if url.lower().endswith((".tif", ".tiff", ".img", ".vrt")):
            match = _VINTAGE.search(url.rsplit("/", 1)[-1])
            return cls({int(match[1]) if match else 0: url}, crs)
        vintages: dict[int, str] = {}
        for found in storage.glob(storage.join(url, "*.tif")):
            match = _VINTAGE.search(found.rsplit("/", 1)[-1])
            if match:
                vintages[int(match[1])] = found
        if not vintages:
            raise ValueError(f"no NLCD rasters named nlcd_YYYY*.tif under {url}")
        return cls(vintages, crs)

    def for_year(self, year: int) -> str:
        """URL of the vintage closest to ``year`` (the earlier one on a tie)."""
        return self.vintages[min(self.vintages, key=lambda v: (abs(v - year), v))]


@contextmanager
def _with_crs(src: Any, nlcd_crs: str | None) -> Iterator[Any]:
    """``src``, or the same grid read as if it carried ``nlcd_crs`` (an identity warp)."""
    if not nlcd_crs:
        yield src
        return
    true_crs = parse_crs(nlcd_crs)
    with WarpedVRT(src, src_crs=true_crs, crs=true_crs, resampling=Resampling.nearest) as vrt:
        yield vrt


def read_labels(
    url: str,
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    nlcd_crs: str | None = None,
) -> np.ndarray:
    """NLCD codes resampled (nearest) onto a target grid, as uint16; 0 where NLCD has no data.

    Args:
        url: the NLCD raster.
        crs: the target grid's CRS.
        transform: the target grid's transform.
        shape: the target grid's (rows, columns).
        nlcd_crs: the raster's true CRS, overriding the embedded one.

    Raises:
        RasterError: the raster cannot be read, has no CRS, holds no integer codes, lies
            outside the United States with its CRS, or does not overlap the grid.
    """
    height, width = shape
    west, north = transform @ (0, 0)
    east, south = transform @ (width, height)
    bounds = (min(west, east), min(south, north), max(west, east), max(south, north))
    out = np.zeros(shape, dtype=np.uint16)
    with open_raster(url) as opened, _with_crs(opened, nlcd_crs) as src:
        check_placement(url, src.crs, tuple(src.bounds))
        if src.dtypes[0] not in _INTEGER_TYPES:
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
        declared = {int(src.nodata)} if src.nodata is not None else set()
    # The warper writes the source's own no-data value (255 in many NLCD files) where it has
    # nothing, whatever dst_nodata says: every no-data code becomes 0.
    out[np.isin(out, list(labels.NLCD_NODATA | declared))] = 0
    return out
