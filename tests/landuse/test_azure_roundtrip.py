"""Dataset construction against the real Azure Storage API (Azurite): abfs:// in and out."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from azure.storage.blob import BlobServiceClient

from landuse import storage
from landuse.counties import County
from landuse.naip import NaipCatalog
from landuse.tiling import TilingConfig, build_county


def _upload(conn: str, container: str, blob: str, path: Path) -> None:
    client = BlobServiceClient.from_connection_string(conn).get_blob_client(container, blob)
    client.upload_blob(path.read_bytes(), overwrite=True)


def test_catalogue_finds_scenes_in_public_naip_layout(azurite, azure_env, real_scene):
    blob = f"v002/nd/2016/nd_100cm_2016/47099/{real_scene.name}"
    _upload(azurite, azure_env, blob, real_scene)
    _upload(azurite, azure_env, "v002/nd/2016/nd_100cm_2016/46098/m_4609801_ne_14_1_20160701.tif",
            real_scene)
    catalog = NaipCatalog(f"abfs://{azure_env}")
    assert catalog.layout == "azure"
    found = catalog.scenes(years=[2016], bbox=(-99.3, 46.9, -99.0, 47.1), state="ND")
    assert [s.name for s in found] == [real_scene.name]
    assert found[0].url == f"abfs://{azure_env}/{blob}"


def test_county_tiles_from_and_to_blob_storage(azurite, azure_env, real_scene):
    blob = f"v002/nd/2016/nd_100cm_2016/47099/{real_scene.name}"
    _upload(azurite, azure_env, blob, real_scene)
    county = County(name="stutsman-nd", state="nd", bbox=(-99.17, 47.01, -99.15, 47.03),
                    naip=f"abfs://{azure_env}")
    root = f"abfs://{azure_env}/out"
    [result] = build_county(county, [2016], root, TilingConfig(chips="all"))  # no NLCD here
    manifest = pd.read_parquet(storage.filesystem(result.manifest_url)[0].open(
        storage.filesystem(result.manifest_url)[1]))
    assert len(manifest) == result.tiles > 0
    assert manifest["image_url"].str.startswith(f"abfs://{azure_env}/out/naip/stutsman-nd/2016/").all()
    png = storage.read_bytes(manifest["image_url"].iloc[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
