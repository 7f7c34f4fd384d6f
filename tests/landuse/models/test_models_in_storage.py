"""Bundles under the storage root (Azurite, ``abfs://``): published by training, named by URL
in champion.json, loadable from any process through a cache keyed by content, and scored on
Spark starting from the URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from landuse import storage
from landuse.models.bundle import BundleError, fetch_bundle, load_bundle, publish_bundle
from landuse.models.preprocessing import PreprocessSpec

pytestmark = pytest.mark.azurite
SPEC = PreprocessSpec(input_size=64)
CLASSES = ("Developed", "Forest", "Shrub")


def _published(onnx_kit, tmp_path: Path, url: str, seed: int = 0) -> str:
    weights, bias = onnx_kit.weights(len(CLASSES), seed=seed)
    folder = onnx_kit.bundle(tmp_path / f"bundle-{seed}", SPEC, CLASSES, weights=weights,
                             bias=bias)
    return publish_bundle(load_bundle(folder), url)


def test_fetch_is_cached_by_content(onnx_kit, azure_env, tmp_path, monkeypatch):
    url = _published(onnx_kit, tmp_path, f"abfs://{azure_env}/models/a")
    cache = tmp_path / "cache"
    first = fetch_bundle(url, cache)
    assert load_bundle(first).spec.classes == CLASSES
    reads: list[str] = []
    original = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda u: reads.append(u) or original(u))
    assert fetch_bundle(url, cache) == first
    assert reads == [f"{url}/contents.json"]  # nothing else downloaded again
    _published(onnx_kit, tmp_path, url, seed=1)  # replaced in place: a new cache entry
    second = fetch_bundle(url, cache)
    assert second != first and load_bundle(second).model_id != load_bundle(first).model_id
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


def test_incomplete_or_altered_bundle_is_refused(onnx_kit, azure_env, tmp_path):
    url = _published(onnx_kit, tmp_path, f"abfs://{azure_env}/models/b")
    storage.write_bytes(f"{url}/model.onnx", b"not the published model")
    with pytest.raises(BundleError, match=r"model\.onnx does not match contents\.json"):
        fetch_bundle(url, tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # nothing half-fetched is left
    with pytest.raises(BundleError, match=r"contents\.json is missing"):
        load_bundle(f"abfs://{azure_env}/models/nothing-here")


def test_spark_scores_from_a_bundle_url(onnx_kit, synthetic, azurite, azure_env, tmp_path,
                                        monkeypatch):
    from landuse import counties
    from landuse.scoring.spark import score_on_spark
    from landuse.spark import local_spark
    from landuse.tiling import TilingConfig, build_county

    monkeypatch.setenv("LANDUSE_BUNDLE_CACHE", str(tmp_path / "cache"))
    root = f"abfs://{azure_env}/landuse"
    url = _published(onnx_kit, tmp_path, f"{root}/models/candidates/run/hand-built")
    county = counties.load_registry(str(synthetic / "counties.json"))["synthetic-county-1"]
    [tiles] = build_county(county, [2016], root, TilingConfig(tile_px=64))
    from pyspark.sql import SparkSession

    running = SparkSession.getActiveSession()
    if running is not None:  # executor settings only apply to a new session
        running.stop()
    spark = local_spark("landuse-score-bundle-url",
                        conf={"spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING": azurite})
    try:
        scored = score_on_spark(spark, tiles.manifest_url, url, f"{root}/predictions")
    finally:
        spark.stop()
    predictions = storage.read_parquet(scored.outputs[("synthetic-county-1", 2016)]).to_pandas()
    assert len(predictions) == tiles.tiles and predictions["error"].isna().all()
    assert set(predictions["model_id"]) == {load_bundle(url).model_id}


LOAD_CHAMPION = textwrap.dedent("""
    import json, sys
    from landuse import config
    from landuse.models.bundle import load_bundle
    from landuse.models.data import read_split
    from landuse.models.runners import OnnxRunner
    from landuse.tiles import read_tiles
    from landuse.models.tracking import models_root, read_champion

    champion = read_champion(models_root(config.storage_root()))
    bundle = load_bundle(champion["bundle"])
    again = load_bundle(champion["bundle"])
    _, val, _ = read_split(sys.argv[1])
    tiles = read_tiles(val.iloc[:4], bundle.spec.preprocessing)
    probs = OnnxRunner(bundle).predict(tiles)
    print(json.dumps({"path": str(bundle.path), "again": str(again.path),
                      "model_id": bundle.model_id, "sums": probs.sum(axis=1).tolist()}))
""")


def test_champion_trained_here_loads_in_a_fresh_process(tiny_dataset, azurite, azure_env,
                                                        tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from landuse.models.tracking import models_root, promote_best, read_champion
    from landuse.models.training import run_candidate, run_folder

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    root = f"abfs://{azure_env}/landuse"
    models = models_root(root)
    results = run_candidate({"backbone": "squeezenet", "methods": ["head"]}, tiny_dataset.url,
                            run_folder(models, "manual__2024-01-01T00:00:00"),
                            options={"epochs": 1, "dense_units": 8})
    [result] = results
    assert result["bundle"] == f"{models}/candidates/manual__2024-01-01T00_00_00/squeezenet-head"
    first = promote_best(results, models)
    assert first["decision"]["decision"] == "first"
    champion = read_champion(models)
    assert champion is not None and champion["bundle"] == result["bundle"]

    # A rerun's challenger is the same model: evaluated afresh, it ties and the champion stays.
    again = promote_best(results, models)["decision"]
    assert again["decision"] == "kept"
    assert again["incumbent_accuracy"] == pytest.approx(again["challenger_accuracy"], abs=1e-12)
    assert read_champion(models) == champion

    # MLflow keeps the bundle as an artifact and knows its URL.
    client = MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.tags["bundle_url"] == result["bundle"]
    logged = client.download_artifacts(result["run_id"], "bundle", str(tmp_path / "artifact"))
    assert load_bundle(logged).model_id == champion["model_id"]

    # Another machine: a fresh process, an empty working folder and bundle cache.
    empty = tmp_path / "elsewhere"
    (empty / "cache").mkdir(parents=True)
    env = {**os.environ, "LANDUSE_STORAGE_ROOT": root, "LANDUSE_BUNDLE_CACHE": str(empty / "cache"),
           "AZURE_STORAGE_CONNECTION_STRING": azurite}
    done = subprocess.run([sys.executable, "-c", LOAD_CHAMPION, tiny_dataset.url], cwd=empty,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["model_id"] == champion["model_id"]
    assert Path(loaded["path"]).parent == empty / "cache" and loaded["again"] == loaded["path"]
    assert loaded["sums"] == pytest.approx([1.0] * 4, abs=1e-5)
