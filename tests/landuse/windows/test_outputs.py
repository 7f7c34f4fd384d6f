"""Output details: the cell transform, empty detections, and GeoJSON without a CRS."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from landuse.windows.grid import WindowGrid
from landuse.windows.nms import DETECTION_COLUMNS
from landuse.windows.outputs import (
    GeoreferenceError,
    cell_transform,
    detections_geojson,
    detections_table,
    write_outputs,
)

EMPTY = pd.DataFrame({c: pd.Series(dtype="float64") for c in DETECTION_COLUMNS})


def test_cell_transform_centres_one_cell_per_window():
    grid = WindowGrid(100, 100, 32, 16)
    image = from_origin(1000.0, 2000.0, 0.5, 0.5)
    cells = cell_transform(grid, image)
    assert cells * (0, 0) == pytest.approx((1004.0, 1996.0))  # 8 px = 4 m in
    assert (cells.a, cells.e) == (8.0, -8.0)  # 16 px cells
    # Cell (r, c) is the centre square of window (r, c): its centre is the window's centre.
    assert cells * (2.5, 1.5) == pytest.approx(image * (2 * 16 + 16, 1 * 16 + 16))
    odd = cell_transform(WindowGrid(100, 100, 45, 22), None)
    assert odd == Affine.translation(11.5, 11.5) * Affine.scale(22)


def test_no_detections_still_make_valid_files(tmp_path):
    crs = CRS.from_epsg(26914)
    collection = detections_geojson(EMPTY, crs, from_origin(0, 0, 1, 1), image="x.tif",
                                    model_id="m@1")
    assert collection["type"] == "FeatureCollection" and collection["features"] == []
    table = detections_table(EMPTY, from_origin(0, 0, 1, 1), crs)
    assert table.num_rows == 0 and "x_min" in table.column_names
    assert table.schema.metadata[b"landuse:crs"].startswith(b"PROJCS")


def test_geojson_without_a_crs_is_refused_before_anything_is_written(tmp_path):
    grid = WindowGrid(64, 64, 32, 16)
    probs = np.full((grid.rows, grid.cols, 2), 0.5, dtype=np.float32)
    with pytest.raises(GeoreferenceError, match=r"image plain\.png has no georeferencing"):
        write_outputs(str(tmp_path / "out"), probs, grid, ("a", "b"), EMPTY, crs=None,
                      transform=None, geojson=True, image="plain.png", model_id="m@1")
    assert not (tmp_path / "out").exists()


def _signed_area(ring: list[list[float]]) -> float:
    """Twice the shoelace area: positive for a counter-clockwise ring."""
    x, y = np.asarray(ring, dtype=np.float64).T
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


@pytest.mark.parametrize("epsg", [26914, 32755])  # UTM 14N, and 55S south of the equator
def test_geojson_rings_are_counter_clockwise_boxes_in_wgs84(epsg: int):
    # Three boxes, one of them a row of pixels wide: every exterior ring must be
    # counter-clockwise (RFC 7946 3.1.6) and cover the box's place in lon/lat.
    from rasterio.warp import transform as reproject_points

    crs = CRS.from_epsg(epsg)
    image = from_origin(500_000.0, 5_200_000.0 if epsg == 26914 else 6_200_000.0, 0.6, 0.6)
    detections = pd.DataFrame({
        "class": ["Developed", "Water", "Forest"], "score": [0.9, 0.8, 0.7],
        "windows": [3, 1, 2], "row0": [0.0, 100.0, 5.0], "col0": [0.0, 40.0, 300.0],
        "row1": [64.0, 101.0, 69.0], "col1": [64.0, 120.0, 364.0]})
    collection = detections_geojson(detections[list(DETECTION_COLUMNS)], crs, image, image="x.tif",
                                    model_id="m@1")
    assert len(collection["features"]) == 3
    for feature, box in zip(collection["features"], detections.itertuples(), strict=True):
        [ring] = feature["geometry"]["coordinates"]
        assert len(ring) == 5 and list(ring[0]) == list(ring[-1])
        assert _signed_area(ring) > 0, f"ring of {box.Index} is clockwise"
        x, y = image * ((box.col0 + box.col1) / 2, (box.row0 + box.row1) / 2)
        (lon,), (lat,) = reproject_points(crs, "EPSG:4326", [x], [y])
        lons, lats = np.asarray(ring).T
        assert lons.min() < lon < lons.max() and lats.min() < lat < lats.max()
