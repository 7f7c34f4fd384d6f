"""Change detection: what changed in a county between two years, as maps and a report.

:mod:`~landuse.change.detect` (transitions per tile), :mod:`~landuse.change.grid` (tiles as
pixels, smoothing), :mod:`~landuse.change.maps` (GeoTIFF, PNG, GeoJSON, figure),
:mod:`~landuse.change.embedding` (change without labels), :mod:`~landuse.change.water`
(NDWI water reference), :mod:`~landuse.change.run` (one county and pair of years, end to end).
"""
