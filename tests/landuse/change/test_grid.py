"""Tiles as pixels: tile ids, one north-up raster per CRS, and the 3×3 plurality filter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rasterio.transform import rowcol

from landuse.change.grid import layouts, parse_tile_ids, plurality_smooth

# --- parse_tile_ids ------------------------------------------------------------------------


def test_parse_tile_ids():
    ids = pd.Series(["32614_2300_22900", "32615_-3_7"], index=[5, 9])
    parts = parse_tile_ids(ids)
    assert list(parts.columns) == ["epsg", "col", "row"]
    assert list(parts.index) == [5, 9]
    assert parts.loc[5].tolist() == [32614, 2300, 22900]
    assert parts.loc[9].tolist() == [32615, -3, 7]


@pytest.mark.parametrize("bad", ["32614_1", "abc_1_2", "32614_1_2_3", "", "32614_1_x",
                                 " 32614_1_2", "32614_1_2\n"])
def test_parse_tile_ids_rejects_other_ids(bad):
    ids = pd.Series(["32614_1_2", bad])
    with pytest.raises(ValueError, match="is not of the form epsg_col_row") as err:
        parse_tile_ids(ids)
    assert repr(bad) in str(err.value)


# --- layouts -------------------------------------------------------------------------------


def test_layout_is_north_up_with_one_pixel_per_tile(change_kit):
    cells = [(2300, 22900), (2302, 22900), (2301, 22901), (2300, 22903)]
    tiles = change_kit.manifest(cells)
    [layout] = layouts(tiles)
    assert layout.crs == "EPSG:32614" and layout.tile_size == 224.0
    assert layout.shape == (4, 3)  # rows 22900-22903, cols 2300-2302
    t = layout.transform
    assert (t.a, t.b, t.d, t.e) == (224.0, 0.0, 0.0, -224.0)
    assert (t.c, t.f) == (2300 * 224.0, 22904 * 224.0)  # top-left corner of the grid
    for tile in tiles.itertuples():
        i = layout.tile_ids.index(tile.tile_id)
        centre = ((tile.minx + tile.maxx) / 2, (tile.miny + tile.maxy) / 2)
        assert rowcol(t, *centre) == (layout.rows[i], layout.cols[i])
        # the pixel's footprint is the tile
        assert t * (layout.cols[i], layout.rows[i] + 1) == pytest.approx((tile.minx, tile.miny))
        assert t * (layout.cols[i] + 1, layout.rows[i]) == pytest.approx((tile.maxx, tile.maxy))
    # the northernmost tile is in the top row, the westernmost in the left column
    top = layout.tile_ids.index("32614_2300_22903")
    assert (layout.rows[top], layout.cols[top]) == (0, 0)


def test_paint_and_read_round_trip(change_kit):
    cells = change_kit.grid(3, 2)
    tiles = change_kit.manifest(cells)
    [layout] = layouts(tiles)
    values = pd.Series(np.arange(1, 7), index=tiles["tile_id"])
    raster = layout.paint(values.iloc[:5], fill=0, dtype="uint8")  # last tile has no value
    assert raster.dtype == np.uint8 and raster.shape == (2, 3)
    # grid() lists cells from the north-west, row by row, like the raster
    assert raster.tolist() == [[1, 2, 3], [4, 5, 0]]
    back = layout.read(raster)
    assert back.to_dict() == {**values.iloc[:5].to_dict(), tiles["tile_id"].iloc[5]: 0}
    # a value for a tile the layout does not have is ignored; NaN is 'no value'
    extra = pd.Series([9.0, np.nan], index=["32614_1_1", tiles["tile_id"].iloc[0]])
    assert layout.paint(extra, fill=7, dtype="int16").tolist() == [[7, 7, 7], [7, 7, 7]]


def test_other_tile_sizes(change_kit):
    tiles = change_kit.manifest([(10, 20), (11, 20)], size=100.0)
    [layout] = layouts(tiles)
    assert layout.tile_size == 100.0 and layout.shape == (1, 2)
    assert (layout.transform.c, layout.transform.f) == (1000.0, 2100.0)


def test_two_crs_make_two_layouts(change_kit):
    east = change_kit.manifest([(100, 5000), (101, 5000)], epsg=32615)
    west = change_kit.manifest([(3000, 22900), (3000, 22901), (3000, 22902)], epsg=32614)
    found = layouts(pd.concat([east, west], ignore_index=True))
    assert [lay.crs for lay in found] == ["EPSG:32614", "EPSG:32615"]
    assert [lay.shape for lay in found] == [(3, 1), (1, 2)]
    assert set(found[0].tile_ids) == set(west["tile_id"])
    assert set(found[1].tile_ids) == set(east["tile_id"])
    assert found[1].transform.c == 100 * 224.0


def test_bounds_that_disagree_with_ids_raise(change_kit):
    tiles = change_kit.manifest(change_kit.grid(2, 2))
    shifted = tiles.copy()
    shifted.loc[1, ["minx", "maxx"]] += 10.0
    with pytest.raises(ValueError, match=r"not on the 224 m grid"):
        layouts(shifted)
    # a few metres off at real UTM coordinates (northings ~5 130 000 m) is off the grid
    for columns, shift in ((["minx", "maxx"], 2.0), (["miny", "maxy"], 30.0)):
        nudged = tiles.copy()
        nudged.loc[1, columns] += shift
        with pytest.raises(ValueError, match=r"not on the 224 m grid"):
            layouts(nudged)
    renamed = tiles.copy()
    renamed.loc[0, "tile_id"] = "32614_1_1"
    with pytest.raises(ValueError, match=r"not on the 224 m grid"):
        layouts(renamed)


def test_mixed_tile_sizes_in_one_crs_raise(change_kit):
    tiles = pd.concat([change_kit.manifest([(0, 0)]),
                       change_kit.manifest([(5, 5)], size=100.0)], ignore_index=True)
    with pytest.raises(ValueError, match=r"different sizes \[100\.0, 224\.0\] m"):
        layouts(tiles)


# --- plurality_smooth ----------------------------------------------------------------------


def test_isolated_tile_takes_its_neighbours_class():
    codes = np.ones((3, 3), dtype=np.int16)
    codes[1, 1] = 0
    out = plurality_smooth(codes, 3)
    assert out.tolist() == [[1, 1, 1]] * 3
    assert out.dtype == np.int16


def test_salt_and_pepper_is_removed_but_blocks_stay():
    codes = np.zeros((6, 6), dtype=np.int16)
    codes[:, 3:] = 1  # two 3-wide blocks
    codes[1, 1] = 2  # speckle
    codes[4, 4] = 0
    out = plurality_smooth(codes, 3)
    expected = np.zeros((6, 6), dtype=np.int16)
    expected[:, 3:] = 1
    assert out.tolist() == expected.tolist()


def test_centre_weight_breaks_ties_for_the_centre():
    # centre A (0) with 2 A neighbours, 4 B (1) and 2 C (2): A 2+2 = 4 votes, B 4 -> tie
    codes = np.array([[0, 1, 1],
                      [0, 0, 1],
                      [2, 2, 1]], dtype=np.int16)
    assert plurality_smooth(codes, 3, centre_weight=2)[1, 1] == 0
    # with one vote for the centre, B wins 4 to 3
    assert plurality_smooth(codes, 3, centre_weight=1)[1, 1] == 1
    # one more B neighbour (5 to 3) beats the centre even at weight 2
    codes[0, 0] = 1
    assert plurality_smooth(codes, 3, centre_weight=2)[1, 1] == 1
    # a tie at weight 1 (A 3, B 3) still goes to the centre
    codes = np.array([[0, 1, 1],
                      [0, 0, 1],
                      [2, 2, 2]], dtype=np.int16)
    assert plurality_smooth(codes, 3, centre_weight=1)[1, 1] == 0


def test_missing_tiles_stay_missing_and_do_not_vote():
    m = -1
    codes = np.array([[m, m, m],
                      [1, 0, m],
                      [1, m, m]], dtype=np.int16)
    out = plurality_smooth(codes, 3, missing=m)
    # six missing neighbours would make 'category -1' (2) win if they voted
    assert out[1, 1] == 0  # 0: 2 votes, 1: 2 votes -> tie -> centre
    assert (out[codes == m] == m).all()
    assert out[1, 0] == 1 and out[2, 0] == 1
    # another missing value
    codes = np.where(codes == m, 9, codes).astype(np.int16)
    out = plurality_smooth(codes, 3, missing=9)
    assert (out[codes == 9] == 9).all() and out[1, 1] == 0


def test_edges_count_only_real_neighbours():
    codes = np.array([[0, 1],
                      [1, 1]], dtype=np.int16)
    # corner tile: itself 2, three neighbours of 1 -> 1
    assert plurality_smooth(codes, 2).tolist() == [[1, 1], [1, 1]]
    codes = np.array([[0, 1],
                      [1, 0]], dtype=np.int16)
    # 0 at a corner: 2 + 1 against 2 -> stays
    assert plurality_smooth(codes, 2).tolist() == [[0, 1], [1, 0]]


def test_centre_weight_below_one_raises():
    with pytest.raises(ValueError, match="centre_weight must be at least 1"):
        plurality_smooth(np.zeros((2, 2), dtype=np.int16), 2, centre_weight=0.5)
