"""NAIP scenes: file-name parsing, footprints, and a catalogue over folders, blob storage
(private or public) and STAC APIs.

A NAIP file name such as ``m_4709963_se_14_1_20100629.tif`` encodes the USGS quadrangle
(1°×1° block ``47099`` named by its south-east corner, 7.5' cell ``63`` counted from the
north-west corner), the quarter (``se``), the UTM zone (14), the ground sample distance
(``1`` = 1 m, ``060`` = 0.6 m) and the acquisition date. The footprint follows from the
name alone, so a county's scenes are found without opening a single file.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from landuse import storage

_NAME = re.compile(
    r"m_(?P<quad>\d{7})_(?P<quarter>ne|nw|se|sw)_(?P<zone>\d{1,2})_(?P<res>\d{1,3})"
    r"_(?P<date>\d{8})(?:_\d{8})?(?:[-_.][\w.-]*)?\.tif$",
    re.IGNORECASE,
)
_CELL = 0.125  # degrees: a 7.5-minute quadrangle
_STATES = frozenset(
    "al az ar ca co ct de fl ga id il in ia ks ky la me md ma mi mn ms mo mt ne nv nh nj nm ny "
    "nc nd oh ok or pa ri sc sd tn tx ut vt va wa wv wi wy".split()
)

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


def _intersects(a: BBox, b: BBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _blocks(bbox: BBox) -> Iterator[str]:
    """The 1°×1° block names (``LLooo``) that a bounding box touches."""
    west, south, east, north = bbox
    for lat in range(int(south // 1), int(-(-north // 1))):
        for lon in range(int(-east // 1), int(-west // 1) + 1):
            if _intersects(bbox, (-(lon + 1), lat, -lon, lat + 1)):
                yield f"{lat:02d}{lon:03d}"


class NaipCatalog:
    """Finds NAIP scenes under a root URL or through a STAC API.

    The root is a folder, an ``abfs://`` URL (credentials from the environment), the HTTPS
    URL of a public Azure container read anonymously (the NAIP one is
    ``https://naipeuwest.blob.core.windows.net/naip``; see
    :func:`landuse.storage.public_blob_endpoint`), or a STAC source
    ``stac+{api}/collections/{collection}`` (:mod:`landuse.stac`). Layouts:

    * ``azure``: the public NAIP layout on Azure Open Datasets,
      ``{root}/v002/{state}/{year}/{state}_{res}_{year}/{block}/m_*.tif``. Only the
      1°×1° block folders a query's bounding box touches are listed.
    * ``flat``: any folder tree holding NAIP-named GeoTIFFs (searched recursively).
    * ``stac``: an item search of a STAC API (chosen by the ``stac+`` root).

    ``layout="auto"`` picks ``stac`` for a ``stac+`` root, else ``azure`` when
    ``{root}/v002`` exists, else ``flat``.
    """

    def __init__(self, root: str, layout: str = "auto") -> None:
        if layout not in ("auto", "azure", "flat", "stac"):
            raise ValueError(
                f"unknown NAIP catalogue layout {layout!r}: use auto, azure, flat or stac")
        self.root = root.rstrip("/")
        from landuse import stac  # it builds on this module's scenes

        if (layout == "stac") != stac.is_stac(self.root) and layout != "auto":
            raise ValueError(f"NAIP root {root!r} and layout {layout!r} do not match: the "
                             "stac layout is for stac+https://... roots, and only it")
        self._stac = stac.StacNaipCatalog(self.root) if stac.is_stac(self.root) else None
        if layout == "auto":
            if self._stac is not None:
                layout = "stac"
            else:
                layout = "azure" if storage.exists(storage.join(self.root, "v002")) else "flat"
        self.layout = layout

    def scenes(
        self,
        *,
        years: Iterable[int] | None = None,
        bbox: BBox | None = None,
        state: str | None = None,
    ) -> list[NaipScene]:
        """Scenes of the given years whose footprint meets ``bbox``, sorted by name.

        Raises:
            ValueError: the azure layout was asked without a state, or with an unknown one.
        """
        if self._stac is not None:
            return self._stac.scenes(years=years, bbox=bbox, state=state)
        wanted = set(years) if years is not None else None
        if self.layout == "azure":
            urls = self._azure_urls(state, wanted, bbox)
        else:
            urls = storage.glob(storage.join(self.root, "**", "*m_*.tif"))
        found = []
        for url in urls:
            try:
                scene = parse_scene_name(url)
            except ValueError:
                continue  # other GeoTIFFs may share the folder
            if wanted is not None and scene.year not in wanted:
                continue
            if bbox is not None and not _intersects(scene.footprint, bbox):
                continue
            found.append(scene)
        return sorted(found, key=lambda s: (s.year, s.name))

    def _azure_urls(
        self, state: str | None, years: set[int] | None, bbox: BBox | None
    ) -> list[str]:
        if state is None or state.lower() not in _STATES:
            raise ValueError(
                f"NAIP state {state!r} is not a two-letter US state code; the azure layout "
                "is organised by state"
            )
        state = state.lower()
        year_parts = [str(y) for y in sorted(years)] if years else ["*"]
        block_parts = sorted(set(_blocks(bbox))) if bbox else ["*"]
        urls: list[str] = []
        for year in year_parts:
            for block in block_parts:
                pattern = storage.join(
                    self.root, "v002", state, year, f"{state}_*_{year}", block, "m_*.tif"
                )
                urls.extend(storage.glob(pattern))
        return urls
