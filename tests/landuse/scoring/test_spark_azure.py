"""Scoring from and to blob storage: tiles in Azurite, read by the Spark workers via abfs://."""

from __future__ import annotations

from landuse import counties, storage
from landuse.scoring.spark import score_on_spark
from landuse.tiling import TilingConfig, build_county


def test_scores_tiles_in_blob_storage(synthetic, bundle, azurite, azure_env):
    from landuse.spark import local_spark

    root = f"abfs://{azure_env}/landuse"
    county = counties.load_registry(str(synthetic / "counties.json"))["synthetic-county-1"]
    [result] = build_county(county, [2016], root, TilingConfig(tile_px=64))
    # The workers need the credentials too; on a real cluster they come from its own
    # configuration. Azurite's development key is public.
    spark = local_spark("landuse-scoring-azure",
                        conf={"spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING": azurite})
    try:
        scored = score_on_spark(spark, result.manifest_url, bundle, f"{root}/predictions")
    finally:
        spark.stop()
    url = scored.outputs[("synthetic-county-1", 2016)]
    assert url.startswith(f"{root}/predictions/county=synthetic-county-1/year=2016/")
    predictions = storage.read_parquet(url).to_pandas()
    assert len(predictions) == result.tiles and predictions["error"].isna().all()
    assert predictions["image_url"].str.startswith("abfs://").all()
