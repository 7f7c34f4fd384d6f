"""On Spark local[2]: one task per equal strip, the same scores as in process; a real scene."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform_bounds

from landuse.models.bundle import load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.windows.job import image_grid, run_windows, score_image, score_in_process
from landuse.windows.nms import match
from landuse.windows.spark import score_strips_on_spark, task_slots

SIX = ("Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated")


@pytest.fixture(scope="module")
def spark():
    """local[2], left running for later tests of this pytest process (the operator and DAG
    tests ask for the same master, so they reuse it instead of starting another JVM)."""
    from landuse.spark import local_spark

    return local_spark("landuse-windows-tests")


def test_task_slots(spark):
    assert task_slots(spark.sparkContext) == 2

    class Cluster:
        master, defaultParallelism = "spark://127.0.0.1:7077", 12

    assert task_slots(Cluster()) == 12


def test_strips_on_spark_score_exactly_what_one_process_does(spark, collage, colour_bundle):
    bundle = load_bundle(colour_bundle)
    grid, _, _ = image_grid(str(collage.tif), 32, 16)
    local = score_in_process(str(collage.tif), bundle, grid)
    # Many small strips: seams everywhere, several strips per task.
    probs, seconds, strips = score_strips_on_spark(spark, str(collage.tif), bundle, grid,
                                                   max_strip_windows=40, batch_size=16)
    assert len(strips) % 2 == 0 and len(strips) >= grid.count / 40
    assert max(s.windows for s in strips) - min(s.windows for s in strips) <= 1
    assert len(seconds) == len(strips) and all(t > 0 for t in seconds)
    np.testing.assert_allclose(probs.reshape(local.probabilities.shape), local.probabilities,
                               atol=1e-6)


def test_collage_on_spark_finds_the_objects(spark, collage, colour_bundle, tmp_path):
    out = tmp_path / "spark"
    summary = run_windows(str(collage.tif), colour_bundle, str(out), spark=spark,
                          detect_classes=["car", "boat"])
    assert summary["strips"] == 2 and summary["spark_master"] == "local[2]"
    precision, recall = match(pd.read_parquet(out / "detections.parquet"), collage.truth)
    assert recall >= 0.9 and precision >= 0.9, (precision, recall)


def test_real_naip_scene_gives_a_georeferenced_land_use_map(spark, real_scene, onnx_kit,
                                                            tmp_path):
    """The bundled Stutsman County scene (4 bands, 5 m, UTM 14N) through a six-class
    model on Spark: a dense map on the scene's grid and GeoJSON on the ground."""
    # Brightness bands: dark Herbaceous, mid Cultivated, bright Developed (a stand-in for a
    # trained model; the point here is the map's placement on the ground).
    weights = np.zeros((3, len(SIX)), dtype=np.float32)
    bias = np.full(len(SIX), -50.0, dtype=np.float32)
    for name, slope, offset in (("Herbaceous", 0, 0), ("Cultivated", 10, 7),
                                ("Developed", 20, 10)):
        weights[:, SIX.index(name)] = slope / 3
        bias[SIX.index(name)] = offset
    folder = onnx_kit.bundle(tmp_path / "six", PreprocessSpec(
        input_size=32, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0)), SIX,
        weights=weights, bias=bias)
    out = tmp_path / "stutsman"
    summary = run_windows(str(real_scene), folder, str(out), spark=spark, threshold=0.5,
                          batch_size=128)
    with rasterio.open(real_scene) as src:
        crs, transform, bounds = src.crs, src.transform, src.bounds
        rows, cols = (src.height - 32) // 16 + 1, (src.width - 32) // 16 + 1
    assert summary["grid"] == [rows, cols] and summary["georeferenced"]
    with rasterio.open(out / "probabilities.tif") as probs:
        assert probs.crs == crs and probs.count == len(SIX)
        assert probs.res == (80.0, 80.0)  # one cell per 16 px stride of 5 m pixels
        assert probs.transform == transform * Affine.translation(8, 8) * Affine.scale(16)
        inner = probs.bounds
        assert bounds.left < inner.left < inner.right < bounds.right
        assert bounds.bottom < inner.bottom < inner.top < bounds.top
        data = probs.read()
    scored = ~np.isnan(data).any(axis=0)
    assert scored.mean() > 0.9
    np.testing.assert_allclose(data[:, scored].sum(axis=0), 1.0, atol=1e-5)
    shares = summary["class_shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(v > 0 for v in shares.values()) >= 2  # a map, not one colour
    collection = json.loads((out / "detections.geojson").read_text())
    assert len(collection["features"]) == summary["detections"] > 0
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds)
    corners = np.concatenate([np.array(f["geometry"]["coordinates"][0])
                              for f in collection["features"]])
    assert (corners[:, 0] >= west - 1e-6).all() and (corners[:, 0] <= east + 1e-6).all()
    assert (corners[:, 1] >= south - 1e-6).all() and (corners[:, 1] <= north + 1e-6).all()


def test_score_image_without_spark_matches(spark, collage, colour_bundle):
    bundle = load_bundle(colour_bundle)
    grid, _, _ = image_grid(str(collage.tif), 24, 8)
    a = score_image(str(collage.tif), bundle, grid, spark=spark, slots=3)
    b = score_image(str(collage.tif), bundle, grid)
    assert len(a.strip_seconds) == 3
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_cancel_without_a_running_job_is_harmless(spark):
    from landuse.windows.spark import cancel

    cancel(spark)
    cancel()  # the active context
