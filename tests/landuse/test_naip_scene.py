"""NAIP file names: parsing, and footprints checked against real rasters."""

from __future__ import annotations

import datetime as dt

import pytest
import rasterio
from rasterio.warp import transform_bounds

from landuse.naip_scene import NaipScene, parse_scene_name

# NAIP quarter quads carry a buffer of ~300 m beyond the nominal 3.75' cell (more once
# downsampled to coarse pixels), so a full scene overhangs its name's footprint by a few
# thousandths of a degree. A wrong quad, cell or quarter is off by 1/16 of a degree or more.
NAIP_BUFFER_DEG = 0.01


def _fixture_rasters(fixtures_dir):
    return sorted(fixtures_dir.glob("m_*.tif"))


def test_fixtures_are_present(fixtures_dir, real_scene):
    names = [p.name for p in _fixture_rasters(fixtures_dir)]
    assert len(names) == 6
    assert any(n.endswith("-downsampled.tif") for n in names)
    assert any(n.endswith("_downsampled.tif") for n in names)
    assert real_scene.exists()


@pytest.mark.parametrize(
    ("name", "quad", "quarter", "zone", "res", "date"),
    [
        ("m_3008501_ne_16_1_20110815.tif", "3008501", "ne", 16, 1.0, dt.date(2011, 8, 15)),
        ("m_3211605_ne_11_060_20200415.tif", "3211605", "ne", 11, 0.6, dt.date(2020, 4, 15)),
        (
            "m_3610332_se_13_060_20200903-downsampled.tif",
            "3610332",
            "se",
            13,
            0.6,
            dt.date(2020, 9, 3),
        ),
        (
            "m_3907864_sw_17_060_20210912_downsampled.tif",
            "3907864",
            "sw",
            17,
            0.6,
            dt.date(2021, 9, 12),
        ),
        ("m_4112001_sw_10_060_20220716.tif", "4112001", "sw", 10, 0.6, dt.date(2022, 7, 16)),
        ("m_4208701_ne_16_060_20200902.tif", "4208701", "ne", 16, 0.6, dt.date(2020, 9, 2)),
        ("m_4709963_se_14_1_20160816.tif", "4709963", "se", 14, 1.0, dt.date(2016, 8, 16)),
        (
            "synthetic_m_4609757_sw_14_2_20100615.tif",
            "4609757",
            "sw",
            14,
            2.0,
            dt.date(2010, 6, 15),
        ),
        ("M_4709963_SE_14_1_20160816.TIF", "4709963", "se", 14, 1.0, dt.date(2016, 8, 16)),
        ("m_4709963_se_14_1_20100629_20101020.tif", "4709963", "se", 14, 1.0, dt.date(2010, 6, 29)),
    ],
)
def test_parse_scene_name(name, quad, quarter, zone, res, date):
    scene = parse_scene_name(f"abfs://naip/v002/xx/{name}")
    assert (scene.quad, scene.quarter, scene.utm_zone) == (quad, quarter, zone)
    assert scene.resolution_m == pytest.approx(res)
    assert scene.date == date
    assert scene.year == date.year
    assert scene.name == name
    assert scene.scene_id == f"{quad}_{quarter}"
    assert scene.epsg == 26900 + zone


def test_every_fixture_and_sample_name_parses(fixtures_dir, real_scene):
    paths = [*_fixture_rasters(fixtures_dir), *sorted(real_scene.parent.glob("*.tif"))]
    assert len(paths) == 9
    for path in paths:
        scene = parse_scene_name(str(path))
        assert scene.url == str(path)


@pytest.mark.parametrize(
    "name", ["m_3211605_ne_11_060_20200415.tif", "m_4208701_ne_16_060_20200902.tif"]
)
def test_060_code_is_the_real_ground_sample_distance(fixtures_dir, name):
    # These two fixtures are crops at native resolution: the pixel size is really 0.6 m.
    scene = parse_scene_name(str(fixtures_dir / name))
    with rasterio.open(fixtures_dir / name) as src:
        assert src.res == pytest.approx((scene.resolution_m,) * 2, abs=0.005)


def _check_footprint_against_raster(path):
    scene = parse_scene_name(str(path))
    with rasterio.open(path) as src:
        # The UTM zone in the name is the raster's own CRS (NAD83 / UTM).
        assert src.crs.to_epsg() == scene.epsg, path.name
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    fw, fs, fe, fn = scene.footprint
    assert fe - fw == pytest.approx(0.0625)
    assert fn - fs == pytest.approx(0.0625)
    b = NAIP_BUFFER_DEG
    assert fw - b <= west and east <= fe + b, path.name
    assert fs - b <= south and north <= fn + b, path.name
    # The raster's centre lies inside the nominal footprint, not merely near it.
    cx, cy = (west + east) / 2, (south + north) / 2
    assert fw < cx < fe and fs < cy < fn, path.name


def test_footprints_contain_the_real_fixture_rasters(fixtures_dir):
    for path in _fixture_rasters(fixtures_dir):
        _check_footprint_against_raster(path)


def test_footprints_contain_the_sample_scenes(real_scene):
    for path in sorted(real_scene.parent.glob("m_*.tif")):
        _check_footprint_against_raster(path)


def test_small_crops_lie_strictly_inside_their_footprint(fixtures_dir):
    # Crops from the middle of a scene have no buffer to excuse: containment is exact.
    for name in ("m_3211605_ne_11_060_20200415.tif", "m_4208701_ne_16_060_20200902.tif"):
        path = fixtures_dir / name
        with rasterio.open(path) as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        fw, fs, fe, fn = parse_scene_name(name).footprint
        assert fw <= west < east <= fe and fs <= south < north <= fn


def test_footprint_of_each_quarter_and_cell():
    def fp(cell: str, quarter: str) -> tuple[float, ...]:
        return parse_scene_name(f"m_47099{cell}_{quarter}_14_1_20160816.tif").footprint

    # Cell 01 is the north-west 7.5' cell of the block 47..48 N, 99..100 W.
    assert fp("01", "nw") == pytest.approx((-100.0, 47.9375, -99.9375, 48.0))
    assert fp("01", "se") == pytest.approx((-99.9375, 47.875, -99.875, 47.9375))
    # Cell 08 is the north-east one, 09 starts the second row, 64 is the south-east one.
    assert fp("08", "ne") == pytest.approx((-99.0625, 47.9375, -99.0, 48.0))
    assert fp("09", "nw") == pytest.approx((-100.0, 47.8125, -99.9375, 47.875))
    assert fp("64", "se") == pytest.approx((-99.0625, 47.0, -99.0, 47.0625))


@pytest.mark.parametrize(
    "name",
    [
        "foo.tif",
        "m_470996_se_14_1_20160816.tif",
        "m_4709963_xx_14_1_20160816.tif",
        "m_4709963_se_14_1_2016081.tif",
        "m_4709963_se_14_1_20160816.jp2",
        "xm_4709963_se_14_1_20160816.tif",
        "m_4709900_se_14_1_20160816.tif",
        "m_4709965_se_14_1_20160816.tif",
        "m_4709963_se_14_1_20161340.tif",
    ],
)
def test_bad_names_raise_naming_the_file(name):
    with pytest.raises(ValueError) as err:
        parse_scene_name(f"/data/naip/{name}")
    assert name in str(err.value)


def test_scene_is_hashable_and_frozen():
    scene = parse_scene_name("m_4709963_se_14_1_20160816.tif")
    assert isinstance(scene, NaipScene)
    with pytest.raises(AttributeError):
        scene.quad = "0000000"  # type: ignore[misc]
    assert len({scene, parse_scene_name("m_4709963_se_14_1_20160816.tif")}) == 1
