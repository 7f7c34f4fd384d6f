"""Opening rasters: GDAL locations for storage URLs, and errors that name the file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
from affine import Affine

from landuse.raster import RasterError, gdal_location, open_raster, read_checked


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("abfs://naip/v002/nd/2016/m_1.tif", "/vsiaz/naip/v002/nd/2016/m_1.tif"),
        (
            "abfs://naip@naipeuwest.dfs.core.windows.net/v002/nd/m_1.tif",
            "/vsiaz/naip/v002/nd/m_1.tif",
        ),
        ("abfss://out@acct.dfs.core.windows.net/a/b.tif", "/vsiaz/out/a/b.tif"),
        ("az://container/blob.tif", "/vsiaz/container/blob.tif"),
        ("https://example.org/x/m_1.tif", "/vsicurl/https://example.org/x/m_1.tif"),
        ("file:///data/m_1.tif", "/data/m_1.tif"),
        ("/data/m_1.tif", "/data/m_1.tif"),
        ("relative/m_1.tif", "relative/m_1.tif"),
    ],
)
def test_gdal_location(url, path, monkeypatch):
    for key in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME",
                "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    assert gdal_location(url) == (path, {})


def test_azure_credentials_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "")
    path, options = gdal_location("abfs://c/blob.tif")
    assert path == "/vsiaz/c/blob.tif"
    assert options == {"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_ACCESS_KEY": "a2V5"}
    assert gdal_location("/local/blob.tif")[1] == {}


def test_unsupported_protocol():
    with pytest.raises(RasterError, match=re.escape("s3://bucket/x.tif")):
        gdal_location("s3://bucket/x.tif")


def test_open_a_real_scene(real_scene):
    with open_raster(str(real_scene)) as src:
        assert src.count == 4
        assert src.crs.to_epsg() == 26914
        block = read_checked(src, str(real_scene), indexes=[1, 2, 3], window=((0, 8), (0, 8)))
    assert block.shape == (3, 8, 8) and block.dtype == np.uint8
    assert src.closed


def test_missing_file(tmp_path):
    url = str(tmp_path / "m_4709963_se_14_1_20160816.tif")
    with pytest.raises(RasterError) as err, open_raster(url):
        pass
    assert url in str(err.value)


def test_not_a_raster(tmp_path):
    url = tmp_path / "m_4709963_se_14_1_20160816.tif"
    url.write_text("this is not a GeoTIFF\n")
    with pytest.raises(RasterError) as err, open_raster(str(url)):
        pass
    assert str(url) in str(err.value)


def test_file_truncated_inside_its_header(tmp_path, real_scene):
    url = tmp_path / real_scene.name
    url.write_bytes(real_scene.read_bytes()[:200])
    with pytest.raises(RasterError) as err, open_raster(str(url)):
        pass
    assert str(url) in str(err.value)


def test_file_truncated_half_way(tmp_path, real_scene):
    # The header survives, so GDAL opens it; the missing blocks fail on read.
    data = real_scene.read_bytes()
    url = tmp_path / real_scene.name
    url.write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterError, match="corrupt or truncated") as err:
        with open_raster(str(url)) as src:
            read_checked(src, str(url))
    assert str(url) in str(err.value)


def test_raster_without_crs(tmp_path):
    url = tmp_path / "m_4709963_se_14_1_20160816.tif"
    with rasterio.open(
        url, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
        transform=Affine(1, 0, 500000, 0, -1, 5200000),
    ) as dst:
        dst.write(np.ones((3, 8, 8), dtype=np.uint8))
    with pytest.raises(RasterError, match="no CRS") as err, open_raster(str(url)):
        pass
    assert str(url) in str(err.value)


def test_raster_error_is_a_value_error():
    # The CLI and DAGs report ValueErrors as user errors rather than crashes.
    assert issubclass(RasterError, ValueError)
