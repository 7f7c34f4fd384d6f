"""The fully convolutional route: the same probabilities as window by window, on the
collage and the real 2016 scene, in process and on Spark; and the networks that must fall
back to the per-window route, saying why."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio

from landuse.models.bundle import load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.windows.fcn import FULLY_CONVOLUTIONAL, PER_WINDOW, FcnScorer, choose_route
from landuse.windows.fcn_model import PARITY_TOLERANCE, fcn_file_name
from landuse.windows.grid import WindowError, plan_strips
from landuse.windows.job import image_grid, run_windows, score_in_process
from landuse.windows.nms import detect
from landuse.windows.source import open_image

from .cnn_kit import CNN_PREPROCESSING, write_cnn_bundle
from .conftest import CLASSES

SIX = ("Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated")


def test_collage_outputs_are_unchanged_by_the_route(collage, colour_bundle, tmp_path):
    """The colour model (ReduceMean + MatMul + Add + Softmax) through both routes, with
    strips of 40 windows (seams inside window rows): the probability COG to 1e-4, the same
    detections after NMS and the same GeoJSON."""
    runs = {}
    for route in (FULLY_CONVOLUTIONAL, PER_WINDOW):
        out = tmp_path / route
        summary = run_windows(str(collage.tif), colour_bundle, str(out), route=route,
                              detect_classes=["car", "boat"], max_strip_windows=40)
        assert summary["route"] == route and summary["route_reason"]
        with rasterio.open(out / "probabilities.tif") as src:
            probs, profile = src.read(), (src.crs, src.transform, src.descriptions)
        runs[route] = (probs, profile, pd.read_parquet(out / "detections.parquet"),
                       json.loads((out / "detections.geojson").read_text()), summary)
    (p1, g1, d1, j1, s1), (p2, g2, d2, j2, s2) = runs.values()
    assert g1 == g2
    np.testing.assert_allclose(p1, p2, atol=PARITY_TOLERANCE, rtol=0)
    pd.testing.assert_frame_equal(d1, d2)
    assert s1["detections"] == s2["detections"] == len(j1["features"]) > 0
    # Identical but for the last float digits (probabilities agree to ~1e-7, and weighted
    # boxes are score-weighted means).
    assert {k: v for k, v in j1.items() if k != "features"} == \
        {k: v for k, v in j2.items() if k != "features"}
    for a, b in zip(j1["features"], j2["features"], strict=True):
        assert a["properties"]["class"] == b["properties"]["class"]
        assert a["properties"]["windows"] == b["properties"]["windows"]
        assert a["properties"]["score"] == pytest.approx(b["properties"]["score"], abs=1e-5)
        assert a["properties"]["pixel_box"] == pytest.approx(b["properties"]["pixel_box"],
                                                              abs=1e-4)
        np.testing.assert_allclose(a["geometry"]["coordinates"],
                                   b["geometry"]["coordinates"], atol=1e-8, rtol=0)
    assert s1["class_shares"] == s2["class_shares"]


def test_real_2016_scene_agrees_window_by_window(real_scene, tmp_path):
    """The Stutsman County scene through a six-class CNN: every window within 1e-4 (strips
    of 97 windows, bands of 3 window rows: seams everywhere), the same unscored windows and
    the same detections."""
    spec = PreprocessSpec(input_size=32, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0))
    bundle = load_bundle(write_cnn_bundle(tmp_path / "six", SIX, spec, seed=7))
    grid, _, _ = image_grid(str(real_scene), 32, 16)
    single = score_in_process(str(real_scene), bundle, grid, max_strip_windows=97)
    route = choose_route(bundle, 32, 16)
    assert route.name == FULLY_CONVOLUTIONAL, route.reason
    scorer = FcnScorer(bundle, 32, 16, max_pixels=3 * 16 * grid.width)
    assert scorer.band_rows(grid.covered[1]) <= 3
    whole = np.empty((grid.count, len(SIX)), np.float32)
    with open_image(str(real_scene)) as source:
        for strip in plan_strips(grid, 1, max_windows=97):
            whole[strip.start:strip.stop] = scorer.score_strip(source, grid, strip)
    whole = whole.reshape(single.probabilities.shape)
    np.testing.assert_array_equal(np.isnan(whole), np.isnan(single.probabilities))
    np.testing.assert_allclose(whole, single.probabilities, atol=PARITY_TOLERANCE, rtol=0)
    assert grid.count > 2000
    a = detect(whole, grid, SIX, threshold=0.5)
    b = detect(single.probabilities, grid, SIX, threshold=0.5)
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)


def test_padded_convolutions_fall_back_and_say_why(collage, tmp_path):
    bundle = write_cnn_bundle(tmp_path / "padded", CLASSES, CNN_PREPROCESSING, pad=1)
    route = choose_route(load_bundle(bundle), 32, 16)
    assert route.name == PER_WINDOW
    assert "padding" in route.reason and "Conv" in route.reason
    summary = run_windows(str(collage.tif), bundle, str(tmp_path / "out"))
    assert summary["route"] == PER_WINDOW and "padding" in summary["route_reason"]
    assert not (bundle / fcn_file_name(32, 16)).exists()
    with pytest.raises(WindowError, match="cannot score 32 px windows every 16 px fully"):
        run_windows(str(collage.tif), bundle, str(tmp_path / "never"),
                    route=FULLY_CONVOLUTIONAL)
    assert not (tmp_path / "never").exists()


def test_other_fallbacks(colour_bundle, colour_bundle_64, cnn_bundle):
    resized = choose_route(load_bundle(colour_bundle_64), 32, 16)
    assert resized.name == PER_WINDOW and "64 px input" in resized.reason
    keras = choose_route(load_bundle(cnn_bundle), 32, 16, framework="keras")
    assert keras.name == PER_WINDOW and "framework keras" in keras.reason
    misaligned = choose_route(load_bundle(cnn_bundle), 32, 6)  # CNN stride 4 at the end
    assert misaligned.name == PER_WINDOW and "not a multiple" in misaligned.reason
    assert choose_route(load_bundle(colour_bundle), 32, 16,
                        requested=PER_WINDOW).name == PER_WINDOW
    with pytest.raises(WindowError, match="route must be one of"):
        choose_route(load_bundle(colour_bundle), 32, 16, requested="fast")


def test_fcn_strips_on_spark_match_per_window_in_process(collage, cnn_bundle):
    from landuse.spark import local_spark
    from landuse.windows.spark import score_strips_on_spark

    spark = local_spark("landuse-windows-tests")
    bundle = load_bundle(cnn_bundle)
    grid, _, _ = image_grid(str(collage.tif), 32, 16)
    route = choose_route(bundle, 32, 16)
    probs, seconds, strips = score_strips_on_spark(spark, str(collage.tif), bundle, grid,
                                                   max_strip_windows=50, route=route)
    assert len(strips) % 2 == 0 and len(seconds) == len(strips)
    single = score_in_process(str(collage.tif), bundle, grid)
    np.testing.assert_allclose(probs.reshape(single.probabilities.shape),
                               single.probabilities, atol=PARITY_TOLERANCE, rtol=0)
