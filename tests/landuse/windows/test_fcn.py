"""Fully convolutional scoring: the same probabilities as window by window, on the collage
and the real 2016 scene, in process and on Spark; and the networks that must fall back."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest
import rasterio

from landuse.models.bundle import load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.windows.fcn import (
    FULLY_CONVOLUTIONAL,
    PARITY_TOLERANCE,
    PER_WINDOW,
    SOURCE_TAG,
    FcnScorer,
    choose_route,
    fcn_file_name,
    load_fcn,
    source_key,
)
from landuse.windows.grid import WindowError, plan_strips
from landuse.windows.job import image_grid, run_windows, score_in_process
from landuse.windows.nms import detect
from landuse.windows.source import open_image

from .cnn_kit import write_cnn_bundle
from .conftest import CLASSES

SIX = ("Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated")
PIXELS = PreprocessSpec(input_size=32, scale=1 / 255)


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A valid-convolution small CNN on 32 px NHWC input, three classes."""
    return write_cnn_bundle(tmp_path_factory.mktemp("cnn") / "valid", CLASSES, PIXELS)


def _both(image: str, bundle, size: int = 32, stride: int = 16, **options):
    loaded = load_bundle(bundle)
    grid, _, _ = image_grid(image, size, stride)
    route = choose_route(loaded, size, stride, requested=FULLY_CONVOLUTIONAL)
    whole = score_in_process(image, loaded, grid, route=route, **options)
    single = score_in_process(image, loaded, grid, **options)
    return whole.probabilities, single.probabilities


@pytest.mark.parametrize(("layout", "head", "stride"), [
    ("NHWC", "gemm", 16), ("NCHW", "matmul", 16), ("NHWC", "matmul", 8), ("NCHW", "gemm", 4),
])
def test_valid_cnns_convert_and_agree_on_the_collage(collage, tmp_path, layout, head, stride):
    spec = PIXELS.model_copy(update={"layout": layout})
    bundle = write_cnn_bundle(tmp_path / "b", CLASSES, spec, head=head, seed=stride)
    route = choose_route(load_bundle(bundle), 32, stride)
    assert route.name == FULLY_CONVOLUTIONAL, route.reason
    whole, single = _both(str(collage.tif), bundle, stride=stride, max_strip_windows=40)
    assert not np.isnan(single).any()
    np.testing.assert_allclose(whole, single, atol=PARITY_TOLERANCE, rtol=0)
    # A real network, not a constant: windows disagree with each other.
    assert single.std(axis=(0, 1)).max() > 1e-3


@pytest.mark.parametrize("spec", [
    PreprocessSpec(input_size=32, channel_order="BGR", mean=(103.939, 116.779, 123.68)),
    PreprocessSpec(input_size=32, layout="NCHW", channel_order="BGR", scale=1 / 255,
                   mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3)),
])
@pytest.mark.parametrize("folded", [True, False])
def test_the_preprocessing_runs_inside_the_model(collage, tmp_path, spec, folded):
    """The fully convolutional model takes the pixels as read (uint8, band-major) and does
    the bundle's preprocessing itself: folded into the first convolution, or as nodes of
    its own when something comes before it; either way the same probabilities."""
    bundle = write_cnn_bundle(tmp_path / "b", CLASSES, spec, lead=not folded)
    fcn = onnx.load_from_string(load_fcn(load_bundle(bundle), 32, 16))
    prefix = {n.op_type for n in fcn.graph.node if n.output[0].startswith("fcn_pixels")}
    assert ("Gather" not in prefix and "Sub" not in prefix) if folded else \
        {"Cast", "Gather", "Sub"} <= prefix
    reads_folded = [n.op_type for n in fcn.graph.node if "fcn_pixels_w" in n.input]
    assert reads_folded == (["Conv"] if folded else [])
    whole, single = _both(str(collage.tif), bundle, max_strip_windows=40)
    np.testing.assert_allclose(whole, single, atol=PARITY_TOLERANCE, rtol=0)
    assert single.std(axis=(0, 1)).max() > 1e-3


def test_a_uint8_model_with_bgr_input_takes_the_pixels_too(collage, tmp_path):
    spec = PreprocessSpec(input_size=32, dtype="uint8", channel_order="BGR")
    bundle = write_cnn_bundle(tmp_path / "b", CLASSES, spec, uint8=True)
    fcn = onnx.load_from_string(load_fcn(load_bundle(bundle), 32, 16))
    prefix = [n.op_type for n in fcn.graph.node if n.output[0].startswith("fcn_pixels")]
    assert "Cast" not in prefix and "Gather" in prefix
    whole, single = _both(str(collage.tif), bundle, max_strip_windows=40)
    np.testing.assert_allclose(whole, single, atol=PARITY_TOLERANCE, rtol=0)
    assert single.std(axis=(0, 1)).max() > 1e-3


def test_a_new_preprocessing_derives_the_model_again(cnn_bundle, tmp_path):
    """The preprocessing is inside the derived model: the same model.onnx with another
    preprocessing must not reuse it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cnn_bundle, copy)
    load_fcn(load_bundle(copy), 32, 16)
    spec = json.loads((copy / "bundle.json").read_text())
    spec["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    (copy / "bundle.json").write_text(json.dumps(spec))
    bundle = load_bundle(copy)
    stored = onnx.load(str(copy / fcn_file_name(32, 16)))
    assert {p.key: p.value for p in stored.metadata_props}[SOURCE_TAG] != source_key(bundle)
    load_fcn(bundle, 32, 16)
    renewed = onnx.load(str(copy / fcn_file_name(32, 16)))
    assert {p.key: p.value for p in renewed.metadata_props}[SOURCE_TAG] == source_key(bundle)


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
    bundle = write_cnn_bundle(tmp_path / "padded", CLASSES, PIXELS, pad=1)
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


def test_the_model_is_kept_in_the_bundle_and_renewed_when_stale(cnn_bundle):
    bundle = load_bundle(cnn_bundle)
    path = cnn_bundle / fcn_file_name(32, 16)
    load_fcn(bundle, 32, 16)
    model = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]  # the pixels as GDAL reads them
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    props = {p.key: p.value for p in model.metadata_props}
    assert props[SOURCE_TAG] == source_key(bundle)
    ops = {n.op_type for n in model.graph.node}
    assert "GlobalAveragePool" not in ops and "Gemm" not in ops and "AveragePool" in ops
    # A model derived from another model.onnx is not used: it is derived again.
    props[SOURCE_TAG] = "0" * 64
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    load_fcn(bundle, 32, 16)
    renewed = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert renewed[SOURCE_TAG] == source_key(bundle)
    assert load_bundle(cnn_bundle).model_id == bundle.model_id  # the bundle is the same


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
