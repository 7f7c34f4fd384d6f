"""Change detection: what changed in a county between two years, as maps and a report.

:mod:`~landuse.change.detect` (transitions per tile), :mod:`~landuse.change.grid` (tiles as
pixels, smoothing), :mod:`~landuse.change.maps` (GeoTIFF, PNG, GeoJSON, figure),
:mod:`~landuse.change.embedding` (change without labels), :mod:`~landuse.change.water`
(NDWI water reference), :mod:`~landuse.change.run` (one county and pair of years, end to end).
"""

from landuse import storage

# A report folder's commit marker: a folder without it holds no whole report.
SUMMARY = "summary.json"
# The analysts' answers on a report (landuse.review): kept when the report is published again.
REVIEWS = "reviews"


def change_url(root: str, county: str, year_a: int, year_b: int) -> str:
    """The report folder of one county and pair of years (here, not in ``run``, so that
    readers of reports, such as :mod:`landuse.review`, need none of the detection code)."""
    return storage.join(root, "change", f"county={storage.safe_name(county)}",
                        f"{year_a}-{year_b}")
