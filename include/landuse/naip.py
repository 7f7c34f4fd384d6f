"""The NAIP catalogue: finds a county's scenes in folders, blob storage (private or public)
and STAC APIs.

Scenes are recognised by their file names alone (:mod:`landuse.naip_scene`), so a folder or
container is searched by listing, without opening a file; a STAC source is searched through
its API (:mod:`landuse.stac`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from landuse import stac, storage
from landuse.naip_scene import BBox, NaipScene, parse_scene_name

_STATES = frozenset(
    "al az ar ca co ct de fl ga id il in ia ks ky la me md ma mi mn ms mo mt ne nv nh nj nm ny "
    "nc nd oh ok or pa ri sc sd tn tx ut vt va wa wv wi wy".split()
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
