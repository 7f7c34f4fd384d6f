"""End to end in one process: the collage's objects found after NMS, outputs and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine

from landuse.raster import RasterError
from landuse.windows.grid import WindowError, WindowGrid
from landuse.windows.job import run_windows
from landuse.windows.nms import match
from landuse.windows.outputs import GeoreferenceError

OBJECTS = ["car", "boat"]


def test_collage_objects_are_found_once_each_after_nms(collage, colour_bundle, tmp_path):
    out = tmp_path / "out"
    summary = run_windows(str(collage.tif), colour_bundle, str(out), detect_classes=OBJECTS)
    detections = pd.read_parquet(out / "detections.parquet")
    precision, recall = match(detections, collage.truth, iou_threshold=0.5)
    assert recall >= 0.9 and precision >= 0.9, (precision, recall)
    # Without NMS, most of the firing windows would be duplicates of the same objects.
    assert summary["windows_merged"] > 2 * len(collage.truth)
    raw_precision = len(collage.truth) / summary["windows_merged"]
    assert raw_precision < 0.5
    assert summary["detections"] == len(detections)
    assert summary["windows"] == summary["scored"] == 23 * 29
    assert set(detections["class"]) <= set(OBJECTS)


def test_resized_nchw_bundle_finds_the_same_objects(collage, colour_bundle_64, tmp_path):
    """32 px windows through a 64 px NCHW model: resized and transposed on the way in."""
    out = tmp_path / "out64"
    run_windows(str(collage.tif), colour_bundle_64, str(out), detect_classes=OBJECTS,
                batch_size=17)
    precision, recall = match(pd.read_parquet(out / "detections.parquet"), collage.truth)
    assert recall >= 0.9 and precision >= 0.9, (precision, recall)


def test_outputs_are_georeferenced_on_the_window_centres(collage, colour_bundle, tmp_path):
    out = tmp_path / "geo"
    summary = run_windows(str(collage.tif), colour_bundle, str(out), detect_classes=OBJECTS)
    assert sorted(summary["outputs"]) == ["classes.tif", "detections.geojson",
                                          "detections.parquet", "probabilities.tif",
                                          "summary.json"]
    with rasterio.open(collage.tif) as src:
        crs, transform = src.crs, src.transform
    with rasterio.open(out / "probabilities.tif") as probs:
        assert probs.crs == crs
        assert probs.count == 3 and probs.descriptions == ("background", "car", "boat")
        assert probs.dtypes[0] == "float32"
        assert (probs.height, probs.width) == (23, 29)
        # One 16 m cell per window, centred: the first cell starts 8 m inside the image.
        assert probs.transform == transform * Affine.translation(8, 8) * Affine.scale(16)
        assert probs.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        data = probs.read()
    np.testing.assert_allclose(data.sum(axis=0), 1.0, atol=1e-5)
    with rasterio.open(out / "classes.tif") as classes:
        assert classes.crs == crs and classes.transform == probs.transform
        np.testing.assert_array_equal(classes.read(1), data.argmax(axis=0))
        assert classes.colormap(1)[1][:3] == (255, 255, 191)
    collection = json.loads((out / "detections.geojson").read_text())
    assert len(collection["features"]) == summary["detections"] > 0
    ring = np.array(collection["features"][0]["geometry"]["coordinates"][0])
    assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
    assert (-99.3 < ring[:, 0]).all() and (ring[:, 0] < -99.1).all()  # lon, lat (RFC 7946)
    assert (47.0 < ring[:, 1]).all() and (ring[:, 1] < 47.1).all()
    for feature in collection["features"]:  # exterior rings counter-clockwise (RFC 7946)
        x, y = np.array(feature["geometry"]["coordinates"][0]).T
        assert np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) > 0
    parquet = pd.read_parquet(out / "detections.parquet")
    first = parquet.iloc[0]
    x0, y0 = transform * (first["col0"], first["row0"])
    assert (first["x_min"], first["y_max"]) == pytest.approx((x0, y0))
    written = json.loads((out / "summary.json").read_text())
    assert written["georeferenced"] and written["crs"] == "EPSG:26914"
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporaries


def test_plain_image_scores_in_pixel_coordinates(collage, colour_bundle, tmp_path):
    out = tmp_path / "png"
    summary = run_windows(str(collage.png), colour_bundle, str(out), detect_classes=OBJECTS)
    assert not summary["georeferenced"]
    assert "detections.geojson" not in summary["outputs"]  # auto: only when georeferenced
    precision, recall = match(pd.read_parquet(out / "detections.parquet"), collage.truth)
    assert recall >= 0.9 and precision >= 0.9
    with rasterio.open(out / "probabilities.tif") as probs:
        assert probs.crs is None
        assert probs.transform == Affine.translation(8, 8) * Affine.scale(16)


def test_geojson_for_an_image_without_georeferencing_is_a_clear_error(
        collage, colour_bundle, tmp_path):
    out = tmp_path / "nogeo"
    with pytest.raises(GeoreferenceError, match=r"collage\.png has no georeferencing"):
        run_windows(str(collage.png), colour_bundle, str(out), geojson=True)
    assert not out.exists()  # checked before anything was scored or written


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [({"size": 600}, WindowError, r"window of 600 px is larger than image .*collage\.tif "
                                  r"\(492 × 392 px\)"),
     ({"stride": 0}, WindowError, "stride must be a positive"),
     ({"stride": 40}, WindowError, "stride 40 px is larger than the 32 px window"),
     ({"threshold": 0}, WindowError, "threshold"),
     ({"detect_classes": ["plane"]}, WindowError, r"cannot detect \['plane'\]"),
     ({"batch_size": 0}, WindowError, "batch_size")],
)
def test_bad_input_fails_before_anything_is_written(collage, colour_bundle, tmp_path, options,
                                                   error, message):
    out = tmp_path / "bad"
    with pytest.raises(error, match=message):
        run_windows(str(collage.tif), colour_bundle, str(out), **options)
    assert not out.exists()


def test_missing_image_is_a_raster_error(colour_bundle, tmp_path):
    with pytest.raises(RasterError, match="cannot open image"):
        run_windows(str(tmp_path / "nope.tif"), colour_bundle, str(tmp_path / "out"))


def test_rerun_replaces_the_outputs(collage, colour_bundle, tmp_path):
    out = tmp_path / "again"
    run_windows(str(collage.tif), colour_bundle, str(out), detect_classes=["car"])
    cars = len(pd.read_parquet(out / "detections.parquet"))
    run_windows(str(collage.tif), colour_bundle, str(out), detect_classes=OBJECTS)
    both = pd.read_parquet(out / "detections.parquet")
    assert len(both) > cars and set(both["class"]) == set(OBJECTS)
    assert WindowGrid(392, 492).count == json.loads((out / "summary.json").read_text())[
        "windows"]
