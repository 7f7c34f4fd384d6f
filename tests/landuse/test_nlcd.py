"""NLCD labels: 30 m Albers codes brought onto a UTM imagery grid, nodata, vintages."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform

from landuse import labels
from landuse.nlcd import NlcdSource, describe, read_labels
from landuse.raster import RasterError

ALBERS = CRS.from_epsg(5070)
UTM = CRS.from_epsg(26914)
LON, LAT = -98.0, 46.03  # North Dakota: UTM 14, about 2° west of Albers' central meridian


def _to(crs, lon, lat):
    (x,), (y,) = transform("EPSG:4326", crs, [lon], [lat])
    return x, y


def _write(path, codes, left, top, *, res=30.0, crs=ALBERS, nodata=None, dtype=None):
    data = codes.astype(dtype or codes.dtype)
    profile = dict(
        driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
        crs=crs, transform=Affine(res, 0, left, 0, -res, top), nodata=nodata,
        tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """A 3 km Albers raster: code 41 west of a known Albers x, 82 east of it."""
    xa, ya = _to(ALBERS, LON, LAT)
    left = math.floor(xa / 30) * 30 - 1500
    top = math.ceil(ya / 30) * 30 + 1500
    codes = np.full((100, 100), 41, dtype=np.uint8)
    codes[:, 50:] = 82
    path = _write(tmp_path_factory.mktemp("nlcd") / "nlcd_2016_halves.tif", codes, left, top)
    return path, left + 50 * 30  # the boundary's Albers x


def _utm_grid(res=3.0, size=300, dx=0.0):
    xu, yu = _to(UTM, LON, LAT)
    half = res * size / 2
    return Affine(res, 0, math.floor(xu) - half + dx, 0, -res, math.floor(yu) + half), (size, size)


def _pixel_centres(tf, shape):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = tf @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
    return np.asarray(xs), np.asarray(ys)


def test_codes_land_on_the_correct_side_after_reprojection(halves):
    url, boundary_x = halves
    tf, shape = _utm_grid()
    out = read_labels(url, UTM, tf, shape)
    assert out.dtype == np.uint16 and out.shape == shape
    xs, ys = _pixel_centres(tf, shape)
    ax, _ = transform(UTM, ALBERS, xs.tolist(), ys.tolist())
    ax = np.asarray(ax).reshape(shape)
    expected = np.where(ax < boundary_x, 41, 82)
    clear = np.abs(ax - boundary_x) > 3.0  # more than a target pixel from the boundary
    assert np.array_equal(out[clear], expected[clear])
    assert set(np.unique(out)) == {41, 82}
    assert 0.2 < np.mean(out == 41) < 0.8
    # The boundary is a straight Albers line but slanted on the UTM grid (grid convergence):
    # a mere shift of the raster would put it in the same column in every row.
    first_82 = [int(np.argmax(out[r] == 82)) for r in (0, shape[0] - 1)]
    assert abs(first_82[0] - first_82[1]) >= 5


def test_known_points_both_ways(halves):
    url, boundary_x = halves
    tf, shape = _utm_grid()
    out = read_labels(url, UTM, tf, shape)
    _, ya = _to(ALBERS, LON, LAT)
    for albers_x, code in ((boundary_x - 120, 41), (boundary_x + 120, 82)):
        (ux,), (uy,) = transform(ALBERS, UTM, [albers_x], [ya])
        col, row = (int(v) for v in ~tf @ (ux, uy))
        assert 0 <= row < shape[0] and 0 <= col < shape[1]
        assert out[row, col] == code
    # And from the target grid back to the source raster.
    with rasterio.open(url) as src:
        for row, col in ((10, 10), (150, 20), (290, 280), (40, 260)):
            x, y = tf @ (col + 0.5, row + 0.5)
            (sx,), (sy,) = transform(UTM, ALBERS, [x], [y])
            [[value]] = list(src.sample([(sx, sy)]))
            assert out[row, col] == value


@pytest.mark.parametrize("declared", [None, 0, 250])
def test_nodata_codes_come_out_as_zero(tmp_path, declared):
    xa, ya = _to(ALBERS, LON, LAT)
    left = math.floor(xa / 30) * 30 - 600
    top = math.ceil(ya / 30) * 30 + 600
    codes = np.full((40, 40), 42, dtype=np.uint8)
    codes[:, :13] = 0
    codes[:, 13:26] = 250
    url = _write(tmp_path / "nlcd_2019.tif", codes, left, top, nodata=declared)
    tf, shape = _utm_grid(res=6.0, size=150)  # 900 m inside the 1200 m raster
    out = read_labels(url, UTM, tf, shape)
    assert set(np.unique(out)) == {0, 42}
    xs, ys = _pixel_centres(tf, shape)
    ax, _ = transform(UTM, ALBERS, xs.tolist(), ys.tolist())
    ax = np.asarray(ax).reshape(shape)
    assert np.all(out[ax < left + 13 * 30 - 6] == 0)
    assert np.all(out[(ax > left + 13 * 30 + 6) & (ax < left + 26 * 30 - 6)] == 0)
    assert np.all(out[ax > left + 26 * 30 + 6] == 42)


def test_grid_partly_outside_the_raster_is_zero_there(halves):
    url, _ = halves
    tf, shape = _utm_grid(res=10.0, size=200, dx=1500.0)  # 2 km wide, shifted 1.5 km east
    out = read_labels(url, UTM, tf, shape)
    assert out[:, -1].max() == 0
    assert (out[:, 0] == 82).all()


def test_raster_that_does_not_overlap(halves):
    url, _ = halves
    tf, shape = _utm_grid(dx=50_000.0)
    with pytest.raises(RasterError, match="does not overlap") as err:
        read_labels(url, UTM, tf, shape)
    assert url in str(err.value)


def test_float_raster_is_not_labels(tmp_path):
    xa, ya = _to(ALBERS, LON, LAT)
    url = _write(tmp_path / "nlcd_2016.tif", np.full((50, 50), 41.0, dtype=np.float32),
                 xa - 750, ya + 750)
    with pytest.raises(RasterError, match="float32") as err:
        read_labels(url, UTM, *_utm_grid())
    assert url in str(err.value)


def test_missing_raster(tmp_path):
    url = str(tmp_path / "nlcd_2016_missing.tif")
    with pytest.raises(RasterError) as err:
        read_labels(url, UTM, *_utm_grid())
    assert url in str(err.value)


def test_truncated_raster(tmp_path):
    xa, ya = _to(ALBERS, LON, LAT)
    rng = np.random.default_rng(0)
    codes = rng.choice([41, 42, 81, 82], size=(600, 600)).astype(np.uint8)
    good = _write(tmp_path / "nlcd_2016_full.tif", codes, xa - 9000, ya + 9000)
    data = open(good, "rb").read()
    bad = tmp_path / "nlcd_2016_truncated.tif"
    bad.write_bytes(data[: len(data) // 2])
    tf = Affine(30, 0, _to(UTM, LON, LAT)[0] - 7500, 0, -30, _to(UTM, LON, LAT)[1] + 7500)
    assert read_labels(good, UTM, tf, (500, 500)).min() > 0
    with pytest.raises(RasterError, match="corrupt or truncated") as err:
        read_labels(str(bad), UTM, tf, (500, 500))
    assert str(bad) in str(err.value)


def test_source_from_folder_picks_the_nearest_vintage(tmp_path):
    for name in ("nlcd_2011_land_cover.tif", "nlcd_2016_land_cover.tif", "elevation.tif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "nlcd_2019_land_cover.img").write_bytes(b"")
    source = NlcdSource.from_url(str(tmp_path))
    assert sorted(source.vintages) == [2011, 2016]
    picks = {year: source.for_year(year) for year in (2008, 2012, 2013, 2014, 2016, 2022)}
    assert {y: u.rsplit("/", 1)[-1][5:9] for y, u in picks.items()} == {
        2008: "2011", 2012: "2011", 2013: "2011", 2014: "2016", 2016: "2016", 2022: "2016"
    }
    assert picks[2014] == str(tmp_path / "nlcd_2016_land_cover.tif")


def test_source_tie_goes_to_the_earlier_vintage(tmp_path):
    for name in ("nlcd_2013.tif", "nlcd_2011.tif"):
        (tmp_path / name).write_bytes(b"")
    source = NlcdSource.from_url(str(tmp_path) + "/")
    assert source.for_year(2012).endswith("nlcd_2011.tif")


def test_source_from_a_single_file():
    assert NlcdSource.from_url("/data/NLCD_2019_Land_Cover.tif").vintages == {
        2019: "/data/NLCD_2019_Land_Cover.tif"
    }
    single = NlcdSource.from_url("abfs://c/landcover.tif")
    assert single.for_year(2010) == single.for_year(2030) == "abfs://c/landcover.tif"


def test_source_from_a_folder_without_nlcd(tmp_path):
    (tmp_path / "landcover.tif").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        NlcdSource.from_url(str(tmp_path))


# --- the real NLCD rasters shipped in sample/nlcd ------------------------------------------

REAL = Path(__file__).resolve().parents[2] / "sample" / "nlcd"
ZION = str(REAL / "nlcd_2011_zion_ut.tif")
FREDERICK = str(REAL / "nlcd_2016_frederick_md.tif")
LAND_COVER = {11, 12, 21, 22, 23, 24, 31, 41, 42, 43, 51, 52, 71, 72, 73, 74, 81, 82, 90, 95}


def test_real_zion_raster_codes_nodata_and_colour_table():
    info = describe(ZION)
    assert info.crs == "EPSG:6367" and info.shape == (1359, 1073)
    west, south, east, north = info.bounds_wgs84
    assert -113.3 < west < east < -112.8 and 37.1 < south < north < 37.6  # Zion, Utah
    assert info.nodata == 255
    assert set(info.codes) <= LAND_COVER and {31, 42, 52} <= set(info.codes)
    assert 255 not in info.codes
    # The colour table is NLCD's own: deciduous forest green, cultivated crops brown.
    red, green, blue, _ = info.colormap[42]
    assert green > red and green > blue
    assert set(info.codes) <= set(info.colormap)


def test_real_zion_labels_on_a_utm_grid_have_no_data_as_zero():
    info = describe(ZION)
    west, _, _, north = info.bounds_wgs84
    crs = CRS.from_epsg(26912)  # UTM 12N on NAD83: another datum than the raster's
    x, y = _to(crs, west, north)
    # A grid hanging over the raster's north-west corner: outside is no data (0).
    tf = Affine(30.0, 0, x - 1500, 0, -30.0, y + 1500)
    codes = read_labels(ZION, crs, tf, (200, 200))
    inside = codes[codes > 0]
    assert inside.size > 0 and (codes == 0).any()
    assert set(np.unique(inside).tolist()) <= LAND_COVER
    assert not np.isin(codes, [255, *labels.NLCD_NODATA - {0}]).any()


def test_a_wrong_embedded_crs_is_refused_naming_the_file():
    with pytest.raises(RasterError, match="probably wrong") as err:
        describe(FREDERICK)
    message = str(err.value)
    assert FREDERICK in message and "nlcd_crs" in message and "EPSG:5070" in message
    crs = CRS.from_epsg(32618)  # UTM 18N, over Frederick, Maryland
    x, y = _to(crs, -77.41, 39.42)
    with pytest.raises(RasterError, match=re.escape(FREDERICK)):
        read_labels(FREDERICK, crs, Affine(10.0, 0, x, 0, -10.0, y), (50, 50))


def test_nlcd_crs_overrides_the_embedded_one():
    info = describe(FREDERICK, nlcd_crs="EPSG:5070")
    west, south, east, north = info.bounds_wgs84
    assert -77.6 < west < -77.5 and -77.3 < east < -77.2 and 39.3 < south < north < 39.6
    assert set(info.codes) == LAND_COVER - {12, 51, 72, 73, 74}  # all 15 of the lower 48
    # On the raster's own grid the override reads every cell exactly as it is stored.
    with rasterio.open(FREDERICK) as src:
        stored = src.read(1, window=((100, 200), (300, 400)))
        tf = src.transform * Affine.translation(300, 100)
    codes = read_labels(FREDERICK, ALBERS, tf, (100, 100), nlcd_crs="EPSG:5070")
    assert np.array_equal(codes, stored.astype(np.uint16))
    # And onto a UTM grid in the middle of Frederick: real classes, no gaps.
    crs = CRS.from_epsg(32618)
    x, y = _to(crs, -77.41, 39.42)
    codes = read_labels(FREDERICK, crs, Affine(10.0, 0, x, 0, -10.0, y), (300, 300),
                        nlcd_crs="EPSG:5070")
    assert (codes > 0).all() and len(np.unique(codes)) >= 5


def test_an_nlcd_crs_that_is_no_crs():
    with pytest.raises(ValueError, match="nlcd_crs 'EPSG:99999999'"):
        NlcdSource.from_url(FREDERICK, crs="EPSG:99999999")
