"""NAIP file names, footprints checked against real rasters, and the scene catalogue."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.warp import transform_bounds

from landuse import storage
from landuse.counties import County
from landuse.naip import NaipCatalog, NaipScene, _blocks, parse_scene_name
from landuse.raster import RasterError, open_raster, read_checked
from landuse.tiling import build_county

SAMPLE_NAIP = Path(__file__).resolve().parents[2] / "sample" / "naip"

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


def test_flat_catalogue_over_the_sample(real_scene):
    catalog = NaipCatalog(str(real_scene.parent))
    assert catalog.layout == "flat"
    scenes = catalog.scenes()
    assert [s.year for s in scenes] == [2010, 2016, 2020]
    assert all(s.scene_id == "4709963_se" for s in scenes)
    assert [s.url for s in catalog.scenes(years=[2016])] == [str(real_scene)]
    assert catalog.scenes(years=[2011]) == []


def test_flat_catalogue_bbox_filter(real_scene):
    catalog = NaipCatalog(str(real_scene.parent) + "/")
    inside = (-99.16, 47.01, -99.15, 47.02)
    assert len(catalog.scenes(bbox=inside)) == 3
    touching_corner = (-99.2, 46.9, -99.18, 47.001)
    assert len(catalog.scenes(years=[2010, 2020], bbox=touching_corner)) == 2
    elsewhere = (-99.0, 47.0, -98.9, 47.1)  # the next quarter quad to the east
    assert catalog.scenes(bbox=elsewhere) == []


def test_flat_catalogue_searches_subfolders_and_skips_other_tifs(tmp_path, real_scene):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(real_scene, tmp_path / "a" / "b" / real_scene.name)
    (tmp_path / "a" / "mosaic_m_overview.tif").write_bytes(b"not naip")
    (tmp_path / "m_4709963_se_14_1_20200831.tif").write_bytes(b"")
    scenes = NaipCatalog(str(tmp_path), layout="flat").scenes()
    assert [s.name for s in scenes] == [real_scene.name, "m_4709963_se_14_1_20200831.tif"]


def _touch(root, state, year, block, name):
    path = root / "v002" / state / year / f"{state}_100cm_{year}" / block / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_azure_layout_lists_only_the_blocks_and_years_asked(tmp_path):
    wanted = _touch(tmp_path, "nd", "2016", "47099", "m_4709963_se_14_1_20160816.tif")
    _touch(tmp_path, "nd", "2016", "46098", "m_4609801_ne_14_1_20160701.tif")
    _touch(tmp_path, "nd", "2014", "47099", "m_4709963_se_14_1_20140701.tif")
    _touch(tmp_path, "sd", "2016", "47099", "m_4709963_se_14_1_20160817.tif")
    catalog = NaipCatalog(str(tmp_path))
    assert catalog.layout == "azure"
    found = catalog.scenes(years=[2016], bbox=(-99.3, 46.9, -99.0, 47.1), state="ND")
    assert [s.url for s in found] == [str(wanted)]
    assert len(catalog.scenes(state="nd")) == 3


@pytest.mark.parametrize("state", [None, "xx", "north dakota"])
def test_azure_layout_needs_a_state(tmp_path, state):
    (tmp_path / "v002").mkdir()
    catalog = NaipCatalog(str(tmp_path))
    with pytest.raises(ValueError, match="state"):
        catalog.scenes(years=[2016], state=state)


def test_unknown_layout():
    with pytest.raises(ValueError, match="layout"):
        NaipCatalog("/tmp", layout="s3")


def test_blocks_of_a_bbox():
    assert sorted(_blocks((-99.3, 47.1, -99.2, 47.2))) == ["47099"]
    assert sorted(_blocks((-99.1, 46.9, -98.9, 47.1))) == ["46098", "46099", "47098", "47099"]
    # Touching an edge is not overlapping.
    assert sorted(_blocks((-99.5, 47.2, -99.0, 47.3))) == ["47099"]


# Public containers: the NAIP layout read anonymously, as from naipeuwest/naip.

NAIP_BLOB = "v002/nd/2016/nd_100cm_2016/47099/m_4709963_se_14_1_20160816.tif"


def test_public_blob_endpoints(monkeypatch):
    monkeypatch.delenv("LANDUSE_PUBLIC_BLOB_ENDPOINTS", raising=False)
    naip = "https://naipeuwest.blob.core.windows.net/naip"
    assert storage.public_blob_endpoint(f"{naip}/v002") == "https://naipeuwest.blob.core.windows.net"
    for other in ("abfs://naip/v002", "https://example.com/naip/v002", "/data/naip",
                  "http://naipeuwest.blob.core.windows.net/naip", "http://127.0.0.1:1/acct/c/x"):
        assert storage.public_blob_endpoint(other) is None
    monkeypatch.setenv("LANDUSE_PUBLIC_BLOB_ENDPOINTS", " http://127.0.0.1:1/acct/ ,")
    assert storage.public_blob_endpoint("http://127.0.0.1:1/acct/c/x") == "http://127.0.0.1:1/acct"
    assert storage.public_blob_endpoint("http://127.0.0.1:1/acct2/c/x") is None
    # No credential from the environment reaches a public container, whatever is set.
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=x;AccountKey=eHl6;")
    fs, path = storage.filesystem(f"{naip}/v002")
    assert (fs.protocol[0], path) == ("abfs", "naip/v002")
    assert fs.connection_string == "BlobEndpoint=https://naipeuwest.blob.core.windows.net;"


@pytest.fixture
def public_container(azurite, monkeypatch):
    """An Azurite container with public access level ``container`` holding the sample
    scene in the NAIP layout (and a private twin); yields (public root, private root).
    The tests then read with no credential in the environment."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite)
    endpoint = service.url.rstrip("/")
    public, private = f"public{time.monotonic_ns()}", f"private{time.monotonic_ns()}"
    service.create_container(public, public_access="container")
    service.create_container(private)
    scene = SAMPLE_NAIP / "m_4709963_se_14_1_20160816.tif"
    for container in (public, private):
        for blob in (NAIP_BLOB, "v002/nd/2016/nd_100cm_2016/46098/m_4609801_ne_14_1_20160701.tif",
                     "v002/nd/2014/nd_100cm_2014/47099/m_4709963_se_14_1_20140701.tif"):
            service.get_blob_client(container, blob).upload_blob(scene.read_bytes())
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME",
                 "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                 "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANDUSE_PUBLIC_BLOB_ENDPOINTS", endpoint)
    monkeypatch.setenv("LANDUSE_STORAGE_RETRIES", "1")
    return f"{endpoint}/{public}", f"{endpoint}/{private}"


def test_public_container_is_listed_and_read_anonymously(public_container, real_scene):
    root, _ = public_container
    catalog = NaipCatalog(root)
    assert catalog.layout == "azure"
    [scene] = catalog.scenes(years=[2016], bbox=(-99.3, 46.9, -99.0, 47.1), state="nd")
    assert scene.url == f"{root}/{NAIP_BLOB}"
    assert storage.size(scene.url) == real_scene.stat().st_size
    window = ((50, 114), (70, 134))
    with open_raster(scene.url) as src, rasterio.open(real_scene) as local:
        assert src.crs == local.crs and src.transform == local.transform
        np.testing.assert_array_equal(read_checked(src, scene.url, window=window),
                                      local.read(window=window))


def test_private_container_is_not_read_without_credentials(public_container):
    _, root = public_container
    with pytest.raises(storage.StorageError, match=root.rsplit("/", 1)[-1]):
        NaipCatalog(root, layout="azure").scenes(years=[2016], state="nd")
    with pytest.raises(RasterError, match=re.escape("m_4709963_se_14_1_20160816.tif")):
        with open_raster(f"{root}/{NAIP_BLOB}"):
            pass


def test_county_tiles_from_a_public_container(public_container, tmp_path, real_scene):
    root, _ = public_container
    county = County(name="stutsman-nd", state="nd", bbox=(-99.17, 47.01, -99.15, 47.03),
                    naip=root)
    [result] = build_county(county, [2016], str(tmp_path / "out"))
    assert result.scenes == (real_scene.name,)
    manifest = pd.read_parquet(result.manifest_url)
    assert len(manifest) == result.tiles > 10
    assert set(manifest["scene_url"]) == {f"{root}/{NAIP_BLOB}"}
