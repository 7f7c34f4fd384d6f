"""The NAIP scene catalogue: folders, the Azure layout and public containers."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from landuse import storage
from landuse.counties import County
from landuse.naip import NaipCatalog, _blocks
from landuse.raster import RasterError, open_raster, read_checked
from landuse.tiling import build_county

SAMPLE_NAIP = Path(__file__).resolve().parents[2] / "sample" / "naip"


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
