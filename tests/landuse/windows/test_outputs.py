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
