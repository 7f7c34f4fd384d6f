"""The water reference: Otsu's threshold, the NDWI + dark-NIR mask, and water shares per tile
read from a small 4-band scene with known water."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

from landuse.change.water import otsu_threshold, water_mask, water_shares
from landuse.raster import RasterError

RES = 2.0
COL0, ROW0 = 2300, 22900  # lower-left tile of the scene
TILE_PX = 112  # 224 m at 2 m

LAND = (90, 80, 70, 150)  # green < NIR
BARE = (180, 170, 160, 140)  # green > NIR (positive NDWI) but bright NIR: not water
WATER = (40, 60, 50, 20)


def test_otsu_splits_a_bimodal_sample_between_the_modes():
    rng = np.random.default_rng(0)
    dark = rng.normal(40, 8, 3000)
    bright = rng.normal(170, 12, 7000)
    values = np.clip(np.concatenate([dark, bright]), 0, 255).astype(np.uint8)
    t = otsu_threshold(values)
    assert 40 < t < 170
    assert (dark < t).mean() > 0.99 and (bright >= t).mean() > 0.99
    # the split does not depend on how many pixels each mode has (within reason)
    assert abs(otsu_threshold(values[1000:]) - t) < 25


def test_water_mask_needs_positive_ndwi_and_dark_nir():
    green = np.array([60, 170, 80, 30], dtype=np.uint8)
    nir = np.array([20, 140, 150, 40], dtype=np.uint8)
    assert water_mask(green, nir, 100.0).tolist() == [True, False, False, False]


def _scene(path, bands=4, tiles_wide=2.5):
    """A scene 2.5 tiles wide and 2 tall with water in known places (see the test)."""
    width, height = int(TILE_PX * tiles_wide), 2 * TILE_PX
    pixels = np.empty((4, height, width), dtype=np.uint8)
    pixels[:] = np.array(LAND, dtype=np.uint8)[:, None, None]

    def paint(value, rows, cols):
        pixels[:, rows, cols] = np.array(value, dtype=np.uint8)[:, None, None]

    t = TILE_PX
    paint(WATER, slice(0, t // 2), slice(0, t // 2))  # top-left tile: a quarter water
    paint(BARE, slice(0, t), slice(t, 2 * t))  # top-right tile: bare field, no water
    paint(WATER, slice(t, 2 * t), slice(0, t))  # bottom-left tile: all water
    paint(WATER, slice(0, t), slice(2 * t, width))  # half-covered tile: water where covered
    transform = Affine(RES, 0, COL0 * 224.0, 0, -RES, (ROW0 + 2) * 224.0)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands,
                       dtype="uint8", crs="EPSG:32614", transform=transform) as dst:
        dst.write(pixels[:bands])
    return str(path)


def _tiles(cells, scene_url):
    return pd.DataFrame([
        {"tile_id": f"32614_{c}_{r}", "scene_url": scene_url, "minx": c * 224.0,
         "miny": r * 224.0, "maxx": (c + 1) * 224.0, "maxy": (r + 1) * 224.0}
        for c, r in cells
    ])


def test_water_shares_per_tile(tmp_path):
    scene = _scene(tmp_path / "m_4709963_se_14_060_20160816.tif")
    cells = {
        "quarter": (COL0, ROW0 + 1), "bare": (COL0 + 1, ROW0 + 1), "all": (COL0, ROW0),
        "land": (COL0 + 1, ROW0), "edge": (COL0 + 2, ROW0 + 1), "outside": (COL0 + 6, ROW0),
    }
    tiles = _tiles(cells.values(), scene)
    tiles = pd.concat([tiles, _tiles([(COL0 + 9, ROW0)], None)], ignore_index=True)
    shares = water_shares(tiles)
    assert list(shares.index) == list(tiles["tile_id"])
    by_name = dict(zip(cells, shares.iloc[:6], strict=True))
    assert by_name["quarter"] == pytest.approx(0.25)
    assert by_name["bare"] == 0.0  # positive NDWI alone is not water
    assert by_name["all"] == 1.0
    assert by_name["land"] == 0.0
    assert by_name["edge"] == 1.0  # the share is of the pixels the scene covers
    assert np.isnan(by_name["outside"])
    assert np.isnan(shares.iloc[6])  # no scene


def test_three_band_scene_is_an_error_naming_it(tmp_path):
    scene = _scene(tmp_path / "rgb_only.tif", bands=3)
    with pytest.raises(RasterError, match=r"scene .*rgb_only\.tif has 3 bands: water needs NIR"):
        water_shares(_tiles([(COL0, ROW0)], scene))


def test_missing_scene_is_an_error_naming_it(tmp_path):
    with pytest.raises(RasterError, match=r"nope\.tif"):
        water_shares(_tiles([(COL0, ROW0)], str(tmp_path / "nope.tif")))
