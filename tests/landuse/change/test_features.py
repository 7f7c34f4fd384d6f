"""Change features of a county-year: one read of each tile's window gives its backbone
features and pixel statistics; computed once, reused, the same on Spark as in process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from landuse import storage
from landuse.change import features
from landuse.change.detect import ChangeInputError
from landuse.models.preprocessing import to_tensor
from landuse.tiles import read_tiles
from landuse.tiling import export_chips, manifest_url


@pytest.fixture(scope="module")
def root(tmp_path_factory, change_root) -> str:
    """A copy of the synthetic county's tiles, so features can be written beside them."""
    out = tmp_path_factory.mktemp("features") / "root"
    shutil.copytree(change_root.root, out)
    return str(out)


def _rows(root: str, county: str, year: int) -> pd.DataFrame:
    return storage.read_parquet(manifest_url(root, county, year)).to_pandas()


def test_every_tile_gets_its_features_once(root, change_root):
    name = change_root.county.name
    frame = features.county_year_features(root, name, 2016)
    rows = _rows(root, name, 2016)
    assert set(frame.index) == set(rows.loc[rows["scene_url"].notna(), "tile_id"])
    assert frame["error"].isna().all()
    embeddings = np.stack(frame["embedding"].to_numpy())
    assert embeddings.shape == (len(frame), 512) and embeddings.std() > 0
    stats = frame[list(features.RAW_STATISTICS)].to_numpy()
    assert np.isfinite(stats).all() and (stats[:, :4] > 0).all() and (stats[:, 4:] >= 0).all()
    url = features.features_url(root, name, 2016)
    stamp = os.stat(url).st_mtime_ns
    again = features.county_year_features(root, name, 2016)  # reused, not recomputed
    assert os.stat(url).st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again, frame)


def test_a_tile_read_from_its_scene_is_its_chip(root, change_root, tmp_path):
    """The features of a tile's window equal those of the chip exported from it."""
    name = change_root.county.name
    frame = features.county_year_features(root, name, 2016)
    listed = export_chips(manifest_url(root, name, 2016), str(tmp_path / "chips"))
    chips = pd.read_parquet(listed).iloc[:4].drop(columns=["scene_url"])  # the chips alone
    model, spec = features.backbone_model()
    session = features._session(str(model))
    from_chips = session.run(["features"], {"image": to_tensor(read_tiles(chips, spec),
                                                                 spec)})[0]
    from_scene = np.stack(frame.loc[chips["tile_id"], "embedding"].to_numpy())
    np.testing.assert_allclose(from_scene, from_chips, rtol=1e-3, atol=1e-3)


def test_a_changed_manifest_is_featurized_again(tmp_path, change_root):
    name = change_root.county.name
    root = str(tmp_path / "root")
    shutil.copytree(change_root.root, root)
    first = features.county_year_features(root, name, 2010)
    manifest = manifest_url(root, name, 2010)
    table = storage.read_parquet(manifest)
    storage.write_parquet(manifest, table.slice(0, len(table) - 3))  # three tiles fewer
    second = features.county_year_features(root, name, 2010)
    assert len(second) == len(first) - 3


def test_unreadable_tiles_are_error_rows_and_three_bands_have_no_statistics(tmp_path,
                                                                           change_root):
    rows = change_root.manifests[2016]
    rows = rows[rows["scene_url"].notna()]
    scene = rows["scene_url"].iloc[0]
    one_scene = rows[rows["scene_url"] == scene].iloc[:5]
    model, spec = features.backbone_model()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(Path(scene).read_bytes()[:4000])  # truncated
    bad = features.scene_features(one_scene.assign(scene_url=str(broken)), model, spec, 64)
    assert bad["error"].str.contains("broken.tif").all() and bad["embedding"].isna().all()
    with rasterio.open(scene) as src:
        profile, pixels = {**src.profile, "count": 3}, src.read([1, 2, 3])
    rgb = tmp_path / "rgb.tif"
    with rasterio.open(rgb, "w", **profile) as out:
        out.write(pixels)
    three = features.scene_features(one_scene.assign(scene_url=str(rgb)), model, spec, 64)
    assert three["error"].isna().all() and three["embedding"].notna().all()
    assert three[list(features.RAW_STATISTICS)].isna().all().all()
    assert np.stack(three["embedding"].to_numpy()).std() > 0
    with pytest.raises(ValueError, match="one scene, got 2"):
        features.scene_features(pd.concat([one_scene, one_scene.assign(scene_url="x.tif")]),
                                model, spec)


def test_a_missing_year_is_named(root, change_root):
    with pytest.raises(ChangeInputError, match="2030"):
        features.county_year_features(root, change_root.county.name, 2030)


def test_pixel_statistics():
    px = np.zeros((4, 2, 2))
    px[:, 0, 0] = [10, 20, 30, 40]
    px[:, 1, 1] = [30, 40, 50, 60]
    np.testing.assert_allclose(features.pixel_statistics(px),
                               [20, 30, 40, 50, 10, 10, 10, 10])  # two valid pixels
    assert np.isnan(features.pixel_statistics(np.zeros((4, 3, 3)))).all()


def test_spark_gives_the_same_features(tmp_path, change_root):
    from landuse.spark import local_spark

    name = change_root.county.name
    root = str(tmp_path / "root")
    shutil.copytree(change_root.root, root)
    here = features.county_year_features(root, name, 2016)
    os.remove(features.features_url(root, name, 2016))
    spark = local_spark("landuse-tests")
    there = features.county_year_features(root, name, 2016, spark=spark)
    assert sorted(there.index) == sorted(here.index)
    pd.testing.assert_frame_equal(there.loc[here.index], here)
    assert not list(Path(root, "features").rglob("_staging/*"))  # staging removed
