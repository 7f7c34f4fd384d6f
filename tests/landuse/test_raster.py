"""Opening rasters: GDAL locations for storage URLs, and errors that name the file."""

from __future__ import annotations

import logging
import os
import re
import socket
import time

import numpy as np
import pytest
import rasterio
from affine import Affine

from landuse import storage
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
    found, options = gdal_location(url)
    assert found == path
    remote = url.startswith(("abfs", "az", "http"))
    assert bool(options) == remote  # retry and timeout settings for remote rasters only
    if remote:
        assert int(options["GDAL_HTTP_MAX_RETRY"]) > 0


def test_azure_credentials_reach_gdal_through_the_environment_only(monkeypatch):
    """rasterio.Env logs its config options at DEBUG level: no secret may be one."""
    for key in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT",
                "AZURE_STORAGE_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5c2VjcmV0")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2024&sig=c2VjcmV0")
    path, options = gdal_location("abfs://c/blob.tif")
    assert path == "/vsiaz/c/blob.tif"
    assert not {"a2V5c2VjcmV0", "sv=2024&sig=c2VjcmV0", "acct"} & set(options.values())
    assert not [k for k in options if k.startswith("AZURE_")]
    # GDAL reads its own variable names from the environment.
    assert os.environ["AZURE_STORAGE_ACCOUNT"] == "acct"
    assert os.environ["AZURE_STORAGE_ACCESS_KEY"] == "a2V5c2VjcmV0"
    assert gdal_location("/local/blob.tif")[1] == {}


def test_a_raster_read_from_azurite_needs_no_secret_option(azure_env, real_scene):
    url = f"abfs://{azure_env}/scenes/{real_scene.name}"
    storage.write_bytes(url, real_scene.read_bytes())
    with open_raster(url) as src:
        assert src.crs.to_epsg() == 26914
        block = read_checked(src, url, indexes=[1], window=((0, 4), (0, 4)))
    assert block.shape == (1, 4, 4)


def test_a_missing_blob_is_bad_input_at_once(azure_env):
    url = f"abfs://{azure_env}/scenes/m_4709963_se_14_1_20160816.tif"
    started = time.monotonic()
    with pytest.raises(RasterError, match=re.escape(url)):
        with open_raster(url):
            pass
    assert time.monotonic() - started < 5  # no back-off for what cannot heal


def test_unreachable_storage_is_retried_then_unavailable(monkeypatch, caplog):
    """A refused connection is not a missing file: retried with back-off, then
    StorageUnavailable (which Airflow retries), never RasterError (which fails at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"))
    monkeypatch.setenv("LANDUSE_STORAGE_RETRIES", "3")
    monkeypatch.setenv("LANDUSE_STORAGE_RETRY_MAX_WAIT_S", "0.2")
    url = "abfs://scenes/m_4709963_se_14_1_20160816.tif"
    with caplog.at_level(logging.WARNING, logger="landuse.storage"):
        with pytest.raises(storage.StorageUnavailable, match=re.escape(url)) as err:
            with open_raster(url):
                pass
    assert not isinstance(err.value, ValueError)
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 2


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


@pytest.mark.parametrize(
    ("message", "network"),
    [
        ("CURL error: Failed to connect to 127.0.0.1 port 1 after 0 ms", True),
        ("HTTP response code: 503", True),
        ("HTTP response code on http://h/x.tif: 0", True),
        ("HTTP response code: 429", True),
        ("HTTP response code: 404", False),
        ("TIFFReadEncodedTile() failed.", False),
        ("not recognized as being in a supported file format", False),
    ],
)
def test_gdal_messages_that_mean_the_network(message, network):
    from landuse.raster import _network_failure

    assert _network_failure(RuntimeError(message)) is network


def test_gdal_debug_lines_never_carry_a_signature_or_key(caplog):
    """GDAL's CPL_DEBUG output names signed URLs; rasterio logs it through Python logging."""
    sas = "sv=2024-08-04&ss=b&srt=co&sp=rl&se=2030-01-01&sig=c2VjcmV0JTJCc2lnbmF0dXJl"
    with caplog.at_level(logging.DEBUG, logger="rasterio._env"):
        logging.getLogger("rasterio._env").debug(
            "GDAL: VSIAZ: GET https://acct.blob.core.windows.net/c/x.tif?%s", sas)
        logging.getLogger("rasterio._env").debug(
            "conn DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5c2VjcmV0;")
    text = caplog.text
    assert "c2VjcmV0JTJCc2lnbmF0dXJl" not in text and "a2V5c2VjcmV0" not in text
    assert "sig=REDACTED" in text and "AccountKey=REDACTED" in text
    assert "se=2030-01-01" in text  # the rest of the line stays useful
