"""Counties: where each one is and where its imagery and labels live.

A registry is a JSON file ``{"counties": [...], "include": ["other.json", ...]}``. Each county
has a name (a safe path segment), a US state code (used by the Azure NAIP layout), a WGS84
bounding box (west, south, east, north), a NAIP source and optionally an NLCD source. The
NAIP source is a folder, an ``abfs://`` URL, the ``https://`` URL of a public Azure
container (read anonymously, e.g. ``https://naipeuwest.blob.core.windows.net/naip``) or a
STAC collection (``stac+https://planetarycomputer.microsoft.com/api/stac/v1/collections/naip``);
see :class:`landuse.naip.NaipCatalog`.
Relative locations are resolved against the registry's own folder, so a registry travels
with its data.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from landuse import stac, storage


class County(BaseModel):
    """One county (or any named area) to tile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="path-safe name, e.g. 'middlesex-ma'")
    state: str | None = Field(None, description="two-letter state code for the Azure layout")
    bbox: tuple[float, float, float, float] = Field(
        description="west, south, east, north in degrees (WGS84); tiles whose centre is inside"
    )
    naip: str = Field(
        description="NAIP source: a folder, an abfs:// URL, a public Azure container's https:// "
        "URL (read anonymously) or a STAC collection stac+https://API/collections/ID"
    )
    nlcd: str | None = Field(None, description="NLCD raster or folder of nlcd_YYYY*.tif")
    nlcd_crs: str | None = Field(
        None, description="the NLCD rasters' true CRS when their embedded one is wrong"
    )
    truth: str | None = Field(
        None, description="folder of planted-change truth rasters (synthetic counties)"
    )
    synthetic: bool = Field(False, description="true for generated test data")

    @field_validator("name")
    @classmethod
    def _safe(cls, name: str) -> str:
        return storage.safe_name(name)

    @field_validator("naip")
    @classmethod
    def _naip_source(cls, naip: str) -> str:
        if stac.is_stac(naip):
            stac.StacSource.parse(naip)  # a malformed STAC source fails at load, named
        return naip

    @model_validator(mode="after")
    def _bbox_order(self) -> County:
        west, south, east, north = self.bbox
        if not (west < east and south < north and -180 <= west and east <= 180):
            raise ValueError(f"county {self.name}: bbox {self.bbox} is not west,south,east,north")
        return self


def _resolve(base: str, location: str | None) -> str | None:
    if location is None or "://" in location or location.startswith("/"):
        return location
    return storage.join(base, location)


def load_registry(url: str, _seen: frozenset[str] = frozenset()) -> dict[str, County]:
    """Counties by name from a registry file and the files it includes.

    Raises:
        ValueError: the file is missing or malformed, includes itself, or a county is
            defined twice.
    """
    if url in _seen:
        raise ValueError(f"county registry {url} includes itself (through {sorted(_seen)})")
    if not storage.exists(url):
        raise ValueError(f"county registry {url} does not exist")
    try:
        doc = json.loads(storage.read_bytes(url))
    except json.JSONDecodeError as err:
        raise ValueError(f"county registry {url} is not valid JSON: {err}") from err
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    counties: dict[str, County] = {}
    for entry in doc.get("counties", []):
        entry = dict(entry)
        entry["naip"] = _resolve(base, entry.get("naip"))
        entry["nlcd"] = _resolve(base, entry.get("nlcd"))
        if entry.get("truth") is not None:
            entry["truth"] = _resolve(base, entry["truth"])
        try:
            county = County(**entry)
        except ValueError as err:
            raise ValueError(f"county registry {url}: {err}") from err
        if county.name in counties:
            raise ValueError(f"county {county.name} is defined twice in {url}")
        counties[county.name] = county
    for include in doc.get("include", []):
        path = _resolve(base, include) or include
        if not storage.exists(path):
            raise ValueError(
                f"county registry {url} includes {path}, which does not exist "
                "(for the synthetic sample, run `landuse synth` first)"
            )
        for name, county in load_registry(path, _seen | {url}).items():
            if name in counties:
                raise ValueError(f"county {name} is defined twice ({url} and {path})")
            counties[name] = county
    return counties


def select(registry: dict[str, County], names: list[str] | None) -> list[County]:
    """The named counties (all when ``names`` is empty), with unknown names reported."""
    if not names:
        return list(registry.values())
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown counties {unknown}; the registry has {sorted(registry)}")
    return [registry[n] for n in names]
