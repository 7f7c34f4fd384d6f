"""Scoring on Spark local[2]: one committed file per county-year, one row per tile."""

from __future__ import annotations

import pandas as pd
import pytest

from landuse.models.bundle import BundleError
from landuse.scoring.spark import predictions_url, score_on_spark


@pytest.fixture(scope="module")
def spark():
    from landuse.spark import local_spark

    session = local_spark("landuse-scoring-tests")
    yield session
    session.stop()


def test_scores_counties_and_commits_one_file_per_county_year(spark, tiled, bundle, tmp_path):
    source = str(tiled / "naip" / "*" / "*" / "manifest.parquet")
    out = str(tmp_path / "predictions")
    result = score_on_spark(spark, source, bundle, out, batch_size=16, partitions=5)
    manifests = pd.concat(pd.read_parquet(p) for p in tiled.glob("naip/*/*/manifest.parquet"))
    expected = manifests[manifests["image_url"].notna()]
    assert result.tiles == len(expected) and result.errors == 0
    assert set(result.outputs) == {(c, y) for c in ("synthetic-county-1", "synthetic-county-2")
                                   for y in (2010, 2016)}
    for (county, year), url in result.outputs.items():
        assert url == predictions_url(out, county, year)
        part = pd.read_parquet(url)
        tiles = expected[(expected["county"] == county) & (expected["year"] == year)]
        assert sorted(part["tile_id"]) == sorted(tiles["tile_id"])  # exactly one row per tile
    assert result.report is not None and result.report["tiles"] > 0


def test_rerun_leaves_exactly_one_row_per_tile(spark, tiled, bundle, tmp_path):
    source = str(tiled / "naip" / "synthetic-county-1" / "2010" / "manifest.parquet")
    out = str(tmp_path / "predictions")
    first = score_on_spark(spark, source, bundle, out)
    again = score_on_spark(spark, source, bundle, out, partitions=3)
    url = first.outputs[("synthetic-county-1", 2010)]
    assert again.outputs[("synthetic-county-1", 2010)] == url
    part = pd.read_parquet(url)
    assert part["tile_id"].is_unique and len(part) == first.tiles


def test_corrupt_tile_is_an_error_row_not_a_failed_job(spark, tiled, bundle, tmp_path):
    manifest = pd.read_parquet(tiled / "naip" / "synthetic-county-2" / "2016" / "manifest.parquet")
    manifest = manifest[manifest["image_url"].notna()].head(12).copy()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    manifest.loc[manifest.index[0], "image_url"] = str(broken)
    source = tmp_path / "manifest.parquet"
    manifest.to_parquet(source)
    result = score_on_spark(spark, str(source), bundle, str(tmp_path / "out"))
    part = pd.read_parquet(result.outputs[("synthetic-county-2", 2016)])
    assert len(part) == 12 and result.errors == 1
    assert "broken.png" in part.loc[part["image_url"] == str(broken), "error"].iloc[0]


def test_invalid_bundle_fails_on_the_driver(spark, tiled, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        score_on_spark(spark, str(tiled / "naip" / "*" / "*" / "manifest.parquet"),
                       tmp_path / "empty", str(tmp_path / "out"))


def test_tiles_of_another_size_than_the_model_are_refused(spark, tiled, onnx_kit, tmp_path):
    from landuse.models.preprocessing import PreprocessSpec

    folder = onnx_kit.bundle(tmp_path / "b224", PreprocessSpec(input_size=224),
                             ("Developed", "Forest", "Shrub"))
    with pytest.raises(ValueError, match=r"64x64 px but bundle .* expects 224x224"):
        score_on_spark(spark, str(tiled / "naip" / "*" / "2010" / "manifest.parquet"), folder,
                       str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing published
