"""Maps: paletted Cloud-Optimized GeoTIFFs, PNGs in the seed's colours, GeoJSON in WGS84,
and the side-by-side figure."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rasterio.io import MemoryFile
from rasterio.warp import transform as warp

from landuse import labels
from landuse.change import maps
from landuse.change.grid import layouts


def _layout_and_values(kit):
    tiles = kit.manifest(kit.grid(3, 2))
    [layout] = layouts(tiles)
    values = pd.Series(["Developed", "Cultivated", "Undeveloped", "Water", None, "Developed"],
                       index=tiles["tile_id"])
    return tiles, layout, values


def test_categorical_codes_are_palette_positions(change_kit):
    _, layout, values = _layout_and_values(change_kit)
    raster = maps.categorical(layout, values, maps.GROUP_PALETTE)
    assert raster.dtype == np.uint8
    assert raster.tolist() == [[1, 2, 3], [4, maps.NO_DATA, 1]]
    assert [name for name, _ in maps.GROUP_PALETTE] == [*labels.SEED_GROUPS, "Water"]


def test_cog_has_the_layout_palette_and_nodata(change_kit):
    _, layout, values = _layout_and_values(change_kit)
    raster = maps.categorical(layout, values, maps.GROUP_PALETTE)
    data = maps.cog_bytes(raster, layout, maps.GROUP_PALETTE, "2016 predicted groups")
    with MemoryFile(data) as mem, mem.open() as src:
        assert src.driver == "GTiff"
        structure = src.tags(ns="IMAGE_STRUCTURE")
        if "LAYOUT" in structure:  # GDAL >= 3.1 reports it
            assert structure["LAYOUT"] == "COG"
        assert src.crs.to_epsg() == 32614
        assert src.transform.almost_equals(layout.transform)
        assert (src.width, src.height, src.count) == (3, 2, 1)
        assert src.dtypes[0] == "uint8" and src.nodata == maps.NO_DATA
        assert src.read(1).tolist() == raster.tolist()
        colormap = src.colormap(1)
        assert colormap[0][3] == 0  # no data is transparent
        for i, (_, rgb) in enumerate(maps.GROUP_PALETTE, start=1):
            assert colormap[i] == (*rgb, 255)
        assert src.tags(1)["CLASS_1"] == "Developed" and src.tags(1)["CLASS_4"] == "Water"
        assert src.tags()["TIFFTAG_IMAGEDESCRIPTION"] == "2016 predicted groups"


def test_png_uses_the_seed_colours(change_kit):
    _, layout, values = _layout_and_values(change_kit)
    raster = maps.categorical(layout, values, maps.GROUP_PALETTE)
    img = Image.open(io.BytesIO(maps.png_bytes(raster, maps.GROUP_PALETTE)))
    assert img.format == "PNG" and img.size == (3, 2)
    rgb = np.asarray(img.convert("RGB"))
    assert tuple(rgb[0, 0]) == (255, 0, 0)  # developed: red
    assert tuple(rgb[0, 1]) == (255, 255, 255)  # cultivated: white
    assert tuple(rgb[0, 2]) == labels.GROUP_COLOURS["Undeveloped"]  # undeveloped: green
    assert rgb[0, 2, 1] > rgb[0, 2, 0] and rgb[0, 2, 1] > rgb[0, 2, 2]
    assert tuple(rgb[1, 0]) == maps.WATER_COLOUR
    assert tuple(rgb[1, 1]) == labels.NO_DATA_COLOUR
    scaled = np.asarray(Image.open(io.BytesIO(maps.png_bytes(raster, maps.GROUP_PALETTE,
                                                               scale=4))).convert("RGB"))
    assert scaled.shape == (8, 12, 3)
    assert (scaled[:4, :4] == (255, 0, 0)).all() and (scaled[4:, 4:8] == 0).all()


def test_change_palette_colours():
    raster = np.array([[1, 2, 3, 4]], dtype=np.uint8)
    rgb = maps.colourise(raster, maps.CHANGE_PALETTE)
    assert tuple(rgb[0, 1]) == (255, 0, 0)  # newly developed is red
    assert [tuple(c) for c in rgb[0]] == [rgb_ for _, rgb_ in maps.CHANGE_PALETTE]


def _ring_centre(feature):
    ring = np.array(feature["geometry"]["coordinates"][0])
    return ring[:4].mean(axis=0)


def test_geojson_is_wgs84_at_the_tiles_place():
    # a tile in UTM 14N around a known place, and one in UTM 15N
    lon0, lat0 = -98.7, 46.9
    (x,), (y,) = warp("EPSG:4326", "EPSG:32614", [lon0], [lat0])
    col, row = int(x // 224), int(y // 224)
    lon1, lat1 = -95.1, 47.2
    (x1,), (y1,) = warp("EPSG:4326", "EPSG:32615", [lon1], [lat1])
    col1, row1 = int(x1 // 224), int(y1 // 224)
    tiles = pd.DataFrame([
        {"tile_id": f"32614_{col}_{row}", "crs": "EPSG:32614", "minx": col * 224.0,
         "miny": row * 224.0, "maxx": col * 224.0 + 224, "maxy": row * 224.0 + 224,
         "b_group": "Developed", "newly_developed": np.bool_(True),
         "b_confidence": np.float32(0.876543), "embedding_distance": np.nan,
         "hotspot": np.int64(3)},
        {"tile_id": f"32615_{col1}_{row1}", "crs": "EPSG:32615", "minx": col1 * 224.0,
         "miny": row1 * 224.0, "maxx": col1 * 224.0 + 224, "maxy": row1 * 224.0 + 224,
         "b_group": None, "newly_developed": np.bool_(False),
         "b_confidence": np.float32(0.5), "embedding_distance": 0.25, "hotspot": np.int64(0)},
    ])
    props = ["b_group", "newly_developed", "b_confidence", "embedding_distance", "hotspot"]
    collection = maps.tiles_geojson(tiles, props)
    json.dumps(collection, allow_nan=False)  # plain JSON types only
    assert collection["type"] == "FeatureCollection"
    features = {f["id"]: f for f in collection["features"]}
    assert set(features) == set(tiles["tile_id"])
    for tile, (lon, lat) in zip(tiles.itertuples(), [(lon0, lat0), (lon1, lat1)], strict=True):
        f = features[tile.tile_id]
        ring = np.array(f["geometry"]["coordinates"][0])
        assert f["geometry"]["type"] == "Polygon" and ring.shape == (5, 2)
        assert (ring[0] == ring[-1]).all()
        # contains the place it was built around, and is a ~224 m square
        assert ring[:, 0].min() <= lon <= ring[:, 0].max()
        assert ring[:, 1].min() <= lat <= ring[:, 1].max()
        cx, cy = (tile.minx + tile.maxx) / 2, (tile.miny + tile.maxy) / 2
        (clon,), (clat,) = warp(tile.crs, "EPSG:4326", [cx], [cy])
        assert _ring_centre(f) == pytest.approx([clon, clat], abs=1e-5)
        assert np.ptp(ring[:, 1]) == pytest.approx(224 / 111_200, rel=0.05)
        # counter-clockwise exterior ring (RFC 7946)
        x, y = ring[:, 0], ring[:, 1]
        assert np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0
        assert f["properties"]["tile_id"] == tile.tile_id
        assert f["properties"]["crs"] == tile.crs
    p0 = features[tiles["tile_id"][0]]["properties"]
    assert p0["b_group"] == "Developed" and p0["newly_developed"] is True
    assert p0["b_confidence"] == pytest.approx(0.8765) and p0["embedding_distance"] is None
    assert p0["hotspot"] == 3 and type(p0["hotspot"]) is int
    p1 = features[tiles["tile_id"][1]]["properties"]
    assert p1["b_group"] is None and p1["newly_developed"] is False
    assert p1["embedding_distance"] == 0.25


def test_geojson_of_no_tiles():
    empty = pd.DataFrame(columns=["tile_id", "crs", "minx", "miny", "maxx", "maxy", "x"])
    assert maps.tiles_geojson(empty, ["x"]) == {"type": "FeatureCollection", "features": []}


def test_side_by_side_is_a_png():
    a = np.array([[1, 2], [3, 0]], dtype=np.uint8)
    b = np.array([[1, 1], [1, 4]], dtype=np.uint8)
    data = maps.side_by_side([("2010 labels", a), ("2016 predictions", b)],
                             maps.GROUP_PALETTE, "county: 2010 | 2016")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.width > img.height > 100
    rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
    # the panels are drawn in the palette's colours
    assert ((rgb == (255, 0, 0)).all(axis=1)).sum() > 100
    assert ((rgb == maps.WATER_COLOUR).all(axis=1)).sum() > 50
    one = Image.open(io.BytesIO(maps.side_by_side([("only", a)], maps.GROUP_PALETTE, "t")))
    assert one.width < img.width


def _colour_pixels(png: bytes, rgb: tuple[int, int, int]) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return int((pixels == rgb).all(axis=1).sum())


def test_map_figure_has_the_palette_a_legend_scale_bar_and_north_arrow():
    raster = np.ones((12, 20), dtype=np.uint8)  # no change; no black "no data" on the map
    raster[4:6, 5:9] = 2  # newly developed
    plain = maps.map_figure(raster, maps.CHANGE_PALETTE, "county: change 2010 -> 2016", 224.0,
                            "EPSG:26914")
    img = Image.open(io.BytesIO(plain))
    assert img.format == "PNG" and img.width > 400
    assert _colour_pixels(plain, (255, 0, 0)) > 200  # the map and its legend swatch
    # The scale bar and the north arrow are black on the map: the same map drawn without
    # them (side_by_side without tile_m) has fewer black pixels.
    with_bar = maps.side_by_side([("a", raster)], maps.CHANGE_PALETTE, "t", tile_m=224.0)
    without = maps.side_by_side([("a", raster)], maps.CHANGE_PALETTE, "t")
    assert _colour_pixels(with_bar, (0, 0, 0)) > _colour_pixels(without, (0, 0, 0)) + 100
    with pytest.raises(ValueError, match="tile_m"):
        maps.map_figure(raster, maps.CHANGE_PALETTE, "t", 0.0)


@pytest.mark.parametrize(("metres", "expected"), [(0.3, 1.0), (7.0, 5.0), (1120.0, 1000.0),
                                                  (2400.0, 2000.0), (9999.0, 5000.0)])
def test_scale_bar_lengths_are_round(metres: float, expected: float):
    assert maps._round_length(metres) == expected


def test_share_and_transition_charts_are_drawn_in_the_group_colours():
    counts = [{"map": "2010 labels", "Developed": 5, "Developed share": 0.2,
               "Undeveloped": 20, "Undeveloped share": 0.8},
              {"map": "2016 predictions", "Developed": 15, "Developed share": 0.6,
               "Undeveloped": 10, "Undeveloped share": 0.4}]
    shares = maps.shares_chart(counts, "county: tiles per group")
    green = labels.GROUP_COLOURS["Undeveloped"]
    assert _colour_pixels(shares, (255, 0, 0)) > 300 and _colour_pixels(shares, green) > 300
    transitions = maps.transitions_chart(
        {"Undeveloped": {"Developed": 9, "Undeveloped": 11}, "Developed": {"Developed": 5}},
        "county: transitions")
    assert _colour_pixels(transitions, (255, 0, 0)) > 300
    with pytest.raises(ValueError, match="share"):
        maps.shares_chart([{"map": "x", "Developed": 3}], "t")
    with pytest.raises(ValueError, match="empty"):
        maps.transitions_chart({}, "t")


@pytest.mark.parametrize(("epsg", "lon", "lat"), [(32614, -98.7, 46.9), (32755, 147.3, -42.9),
                                                  (3857, 10.0, 0.0)])
def test_every_geojson_ring_is_counter_clockwise(epsg, lon, lat):
    # a 3x2 block of tiles north and south of the equator, and in Web Mercator
    (x,), (y,) = warp("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
    col, row = int(x // 224), int(y // 224)
    tiles = pd.DataFrame([
        {"tile_id": f"{epsg}_{col + i}_{row + j}", "crs": f"EPSG:{epsg}",
         "minx": (col + i) * 224.0, "miny": (row + j) * 224.0,
         "maxx": (col + i + 1) * 224.0, "maxy": (row + j + 1) * 224.0}
        for i in range(3) for j in range(2)])
    collection = maps.tiles_geojson(tiles, [])
    assert len(collection["features"]) == 6
    for f in collection["features"]:
        [ring] = f["geometry"]["coordinates"]
        x, y = np.array(ring, dtype=float).T
        assert np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0, f["id"]  # shoelace: CCW


def test_null_chart_draws_each_pair():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.5, 1.5, 280), rng.normal(9.0, 1.0, 20)])
    flagged = scores > 6
    png = maps.null_chart([("quiet", scores, flagged, 0.5, 1.5, 0.05),
                           ("nothing flagged", scores[:280], np.zeros(280, bool), 0.0, 1.0, 0.05)])
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.width > 1.5 * img.height
        colours = set(img.convert("RGB").getdata())
    assert (215, 48, 31) in colours  # the flagged tiles' bars
