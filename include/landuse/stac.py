"""NAIP scenes found through a STAC API (such as the Planetary Computer's ``naip`` collection).

A county names a STAC source as ``stac+{api}/collections/{collection}``, for example
``stac+https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip``. Scenes are
found by an item search (pystac-client) on the county's bounding box and years; each item's
GeoTIFF asset becomes a :class:`~landuse.naip_scene.NaipScene` whose URL is the asset's plain
href, read through GDAL's ``/vsicurl/``. Catalogues whose assets need a signature get one
when a scene is opened, not when it is found (:func:`landuse.storage.register_signer`), so
each open gets a live token and manifests never record one. The signer is registered in
the process that searched; another process that reads a manifest's scenes (scoring from
scenes) calls :meth:`StacNaipCatalog.sign_reads` with them first. Only the Planetary
Computer is known to need signing (``planetary-computer``'s SAS tokens); other catalogues'
assets are read as they are.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from landuse import storage
from landuse.naip_scene import BBox, NaipScene, parse_scene_name

PREFIX = "stac+"
PLANETARY_COMPUTER_HOST = "planetarycomputer.microsoft.com"
_LOCATION = re.compile(r"^stac\+(?P<api>https?://[^?#]+?)/collections/(?P<collection>[\w.-]+)/?$")
# The asset keys NAIP catalogues use for the 4-band GeoTIFF (the Planetary Computer: image).
_ASSET_KEYS = ("image", "data", "visual")
_GEOTIFF = ("image/tiff", "image/geotiff")


def is_stac(location: str) -> bool:
    """Whether a NAIP location names a STAC source (``stac+http(s)://...``)."""
    return location.startswith(PREFIX)


@dataclass(frozen=True)
class StacSource:
    """A STAC API and the collection holding NAIP items."""

    api: str
    collection: str

    @classmethod
    def parse(cls, location: str) -> StacSource:
        """Parse ``stac+{api}/collections/{collection}``.

        Raises:
            ValueError: the location is not of that form; the message names it.
        """
        match = _LOCATION.match(location)
        if not match:
            raise ValueError(
                f"NAIP STAC source {location!r} is not of the form "
                "stac+https://HOST/API/collections/COLLECTION (e.g. stac+https://"
                f"{PLANETARY_COMPUTER_HOST}/api/stac/v1/collections/naip)"
            )
        return cls(api=match["api"], collection=match["collection"])

    @property
    def location(self) -> str:
        """The source as a county names it."""
        return f"{PREFIX}{self.api}/collections/{self.collection}"

    @property
    def is_planetary_computer(self) -> bool:
        """Whether the API is Microsoft's Planetary Computer (whose assets need signing)."""
        return urlsplit(self.api).hostname == PLANETARY_COMPUTER_HOST


def planetary_computer_signer() -> Callable[[str], str]:
    """The Planetary Computer's href signer (a cached, auto-renewed SAS token per container)."""
    import planetary_computer

    def sign(href: str) -> str:
        return str(planetary_computer.sign_url(href))

    return sign


class StacNaipCatalog:
    """Finds NAIP scenes with a STAC item search.

    Args:
        location: ``stac+{api}/collections/{collection}``.
        sign: signs an asset href for reading; default: the Planetary Computer's signer for
            that catalogue, none for any other.
        timeout: seconds for each request to the API.
    """

    def __init__(self, location: str, sign: Callable[[str], str] | None = None,
                 timeout: float = 60.0) -> None:
        self.source = StacSource.parse(location)
        if sign is None and self.source.is_planetary_computer:
            sign = planetary_computer_signer()
        self.sign = sign
        self.timeout = timeout

    def scenes(
        self,
        *,
        years: Iterable[int] | None = None,
        bbox: BBox | None = None,
        state: str | None = None,
    ) -> list[NaipScene]:
        """Scenes of the given years whose items meet ``bbox``, sorted by year and name.

        ``state`` is accepted for the catalogue interface and not used: the search is by
        geometry, which also finds scenes of a neighbouring state's flight.

        Raises:
            StorageUnavailable: the API could not be reached or throttled, after retries.
            ValueError: the API answered with an error, or an item has no NAIP GeoTIFF.
        """
        wanted = sorted(set(years)) if years is not None else None
        if wanted == []:
            return []
        search: dict[str, object] = {"collections": [self.source.collection]}
        if bbox is not None:
            west, south, east, north = bbox
            search["intersects"] = {
                "type": "Polygon",
                "coordinates": [[[west, south], [east, south], [east, north],
                                 [west, north], [west, south]]],
            }
        if wanted:
            # One range for all years (NAIP flies a state every two or three years, so the
            # gaps cost little); items outside the wanted years are dropped below.
            search["datetime"] = f"{wanted[0]}-01-01T00:00:00Z/{wanted[-1]}-12-31T23:59:59Z"
        items = storage.with_retries(f"cannot search {self.source.location}",
                                     lambda: self._search(search))
        found: dict[str, NaipScene] = {}
        for item in items:
            scene = self._scene(item)
            if wanted is None or scene.year in wanted:
                found[scene.url] = scene  # one scene may be listed under two states
        self.sign_reads(found)
        return sorted(found.values(), key=lambda s: (s.year, s.name))

    def sign_reads(self, urls: Iterable[str]) -> None:
        """Have this catalogue's assets at ``urls`` signed whenever this process opens them
        (nothing to do for a catalogue that needs no signing)."""
        if self.sign is not None:
            for folder in {url.rsplit("/", 1)[0] + "/" for url in urls}:
                storage.register_signer(folder, self.sign)

    def _search(self, search: dict[str, object]) -> list[dict[str, object]]:
        from pystac_client import Client
        from pystac_client.exceptions import APIError

        try:
            client = Client.open(self.source.api, timeout=self.timeout)
            return list(client.search(**search).items_as_dicts())  # type: ignore[arg-type]
        except APIError as err:
            if storage.is_transient(err):
                raise
            raise ValueError(f"STAC API {self.source.api} refused the NAIP search: {err}") \
                from err

    def _scene(self, item: dict[str, object]) -> NaipScene:
        assets = item.get("assets")
        assets = assets if isinstance(assets, dict) else {}
        keys = [k for k in _ASSET_KEYS if k in assets] + [
            k for k, a in assets.items()
            if str(a.get("type", "")).split(";")[0].strip() in _GEOTIFF and k not in _ASSET_KEYS
        ]
        for key in keys:
            href = assets[key].get("href")
            if isinstance(href, str):
                try:  # the name without a query (a catalogue may pre-sign its hrefs)
                    scene = parse_scene_name(href.split("?", 1)[0])
                except ValueError:
                    continue
                return dataclasses.replace(scene, url=href)
        raise ValueError(
            f"STAC item {item.get('id')!r} of {self.source.location} has no NAIP GeoTIFF "
            f"asset (looked at {keys or sorted(assets)})"
        )

