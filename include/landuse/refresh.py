"""The yearly refresh: which NAIP vintages of which counties still need processing.

A vintage is processed once its predictions are committed. A run that covers the years
``[start_year, end_year)`` (its data interval) takes every vintage of those years not yet
processed, and also any older vintage newer than the last processed one (NAIP is often
published a year or more after it was flown). Backfills over years therefore process each
year once, in order, and a rerun finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from landuse import storage
from landuse.counties import County
from landuse.naip import NaipCatalog


def available_vintages(county: County) -> list[int]:
    """NAIP years the catalogue has for the county (scenes meeting its bounding box)."""
    scenes = NaipCatalog(county.naip).scenes(bbox=county.bbox, state=county.state)
    return sorted({s.year for s in scenes})


def processed_vintages(root: str, county: str) -> set[int]:
    """Years whose predictions are committed for the county."""
    pattern = storage.join(root, "predictions", f"county={storage.safe_name(county)}",
                           "year=*", "predictions.parquet")
    return {int(url.rsplit("/year=", 1)[1].split("/", 1)[0]) for url in storage.glob(pattern)}


def vintages_to_process(available: Iterable[int], processed: set[int], start_year: int,
                        end_year: int) -> list[int]:
    """The vintages a run over ``[start_year, end_year)`` should process (see module doc)."""
    last = max(processed, default=None)
    return sorted(
        y for y in set(available)
        if y < end_year and y not in processed
        and (y >= start_year or last is None or y > last)
    )


def plan_refresh(counties: Iterable[County], root: str, start_year: int,
                 end_year: int, states: Iterable[str] = ()) -> list[dict[str, object]]:
    """One ``{"county", "year"}`` job per vintage to process, for counties of ``states``
    (all when empty)."""
    wanted = {s.lower() for s in states}
    jobs: list[dict[str, object]] = []
    for county in counties:
        if wanted and (county.state or "").lower() not in wanted:
            continue
        todo = vintages_to_process(available_vintages(county),
                                   processed_vintages(root, county.name), start_year, end_year)
        jobs += [{"county": county.name, "year": year} for year in todo]
    return jobs
