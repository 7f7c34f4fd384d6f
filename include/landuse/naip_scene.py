"""NAIP scene names: what a NAIP file name says, and the footprint that follows from it.

A NAIP file name such as ``m_4709963_se_14_1_20100629.tif`` encodes the USGS quadrangle
(1°×1° block ``47099`` named by its south-east corner, 7.5' cell ``63`` counted from the
north-west corner), the quarter (``se``), the UTM zone (14), the ground sample distance
(``1`` = 1 m, ``060`` = 0.6 m) and the acquisition date. The footprint follows from the
name alone, so a county's scenes are found without opening a single file.

Both ways of finding scenes build on this module: the folder and blob catalogue
(:mod:`landuse.naip`) and the STAC search (:mod:`landuse.stac`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_NAME = re.compile(
    r"m_(?P<quad>\d{7})_(?P<quarter>ne|nw|se|sw)_(?P<zone>\d{1,2})_(?P<res>\d{1,3})"
    r"_(?P<date>\d{8})(?:_\d{8})?(?:[-_.][\w.-]*)?\.tif$",
    re.IGNORECASE,
)
_CELL = 0.125  # degrees: a 7.5-minute quadrangle

BBox = tuple[float, float, float, float]  # west, south, east, north (degrees, WGS84)


@dataclass(frozen=True)
class NaipScene:
    """One NAIP quarter-quad image, identified by its file name."""

    url: str
    quad: str
    quarter: str
    utm_zone: int
    resolution_m: float
    date: dt.date

    @property
    def name(self) -> str:
        """File name without folders."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def scene_id(self) -> str:
        """Quad and quarter, e.g. ``4709963_se``: the same ground in every vintage."""
        return f"{self.quad}_{self.quarter}"

    @property
    def year(self) -> int:
        """Acquisition year."""
        return self.date.year

    @property
    def epsg(self) -> int:
        """EPSG code NAIP uses for this UTM zone (NAD83)."""
        return 26900 + self.utm_zone

    @property
    def footprint(self) -> BBox:
        """The quarter-quad's nominal extent in degrees (west, south, east, north)."""
        lat0, lon0, cell = int(self.quad[:2]), int(self.quad[2:5]), int(self.quad[5:7])
        row, col = divmod(cell - 1, 8)
        north = lat0 + 1 - row * _CELL
        west = -(lon0 + 1) + col * _CELL
        half = _CELL / 2
        south_half = self.quarter[0] == "s"
        east_half = self.quarter[1] == "e"
        top = north - half if south_half else north
        left = west + half if east_half else west
        return (left, top - half, left + half, top)


def parse_scene_name(url: str) -> NaipScene:
    """Parse a NAIP file name (the URL's last part).

    Raises:
        ValueError: the name does not follow the NAIP convention; the message names it.
    """
    name = url.rsplit("/", 1)[-1]
    match = _NAME.search(name)
    if not match or not name.lower().startswith(("m_", "synthetic_m_")):
        raise ValueError(
            f"{name!r} is not a NAIP file name (expected m_QQQQQCC_QQ_ZZ_RES_YYYYMMDD.tif)"
        )
    cell = int(match["quad"][5:])
    if not 1 <= cell <= 64:
        raise ValueError(f"{name!r}: quadrangle cell {cell} is outside 01-64")
    res = match["res"]
    # "1" / "2" are metres; three digits are centimetres ("060" = 0.6 m).
    resolution = float(res) if len(res) == 1 else int(res) / 100
    try:
        date = dt.datetime.strptime(match["date"], "%Y%m%d").date()
    except ValueError as err:
        raise ValueError(f"{name!r}: acquisition date {match['date']} is not a date") from err
    return NaipScene(
        url=url,
        quad=match["quad"],
        quarter=match["quarter"].lower(),
        utm_zone=int(match["zone"]),
        resolution_m=resolution,
        date=date,
    )
