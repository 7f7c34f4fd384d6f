"""SlidingWindowScoringOperator, executed for real in process and on Spark local[2]."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from airflow.sdk.exceptions import AirflowFailException
from PIL import Image
from rasterio.transform import from_origin

from landuse import labels
from landuse_airflow.operators.windows import SlidingWindowScoringOperator


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small georeferenced RGB raster of random colour blocks (and a PNG twin)."""
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, 256, (5, 6, 3))
    pixels = np.kron(blocks, np.ones((32, 32, 1))).astype(np.uint8)  # 160 × 192
    folder = tmp_path_factory.mktemp("scene")
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=192, height=160,
                       count=3, dtype="uint8", crs="EPSG:26914",
                       transform=from_origin(486_000, 5_209_000, 2.0, 2.0)) as dst:
        dst.write(pixels.transpose(2, 0, 1))
    Image.fromarray(pixels).save(folder / "scene.png")
    return folder


def _op(scene: Path, bundle: Path, out: Path, **kwargs) -> SlidingWindowScoringOperator:
    options = {"image_url": str(scene / "scene.tif"), "bundle_path": str(bundle),
               "output_url": str(out), "spark_master": None, "threshold": 0.5}
    options.update(kwargs)
    return SlidingWindowScoringOperator(task_id="windows", **options)


def test_scores_in_process_and_returns_the_summary(scene, onnx_bundle, tmp_path):
    summary = _op(scene, onnx_bundle, tmp_path / "out").execute(context={})
    assert summary["windows"] == summary["scored"] == 9 * 11
    assert summary["strips"] == 1 and summary["spark_master"] is None
    assert summary["georeferenced"] and summary["crs"] == "EPSG:26914"
    assert summary["model_id"].startswith("hand-built@")
    # 32 px windows of a 32 px mean-colour model: scored fully convolutionally.
    assert summary["route"] == "fully-convolutional"
    for url in summary["outputs"].values():
        assert Path(url).is_file()
    json.dumps(summary)  # XCom-serialisable
    with rasterio.open(summary["outputs"]["probabilities.tif"]) as probs:
        assert probs.res == (32.0, 32.0) and probs.count == len(labels.CLASSES)


def test_templated_strings_are_typed(scene, onnx_bundle, tmp_path):
    """Jinja renders strings; the operator turns them into numbers before use."""
    op = _op(scene, onnx_bundle, tmp_path / "str", window_size="24", stride="8",
             threshold="0.6", iou_threshold="0.2", batch_size="50", geojson="no",
             detect_classes="Developed, Forest")
    summary = op.execute(context={})
    assert (summary["window_size"], summary["stride"]) == (24, 8)
    # 24 px windows are resized for the 32 px model: window by window, and the summary says why.
    assert summary["route"] == "per-window" and "32 px input" in summary["route_reason"]
    assert "detections.geojson" not in summary["outputs"]
    assert set(summary["detections_per_class"]) <= {"Developed", "Forest"}


def test_scores_on_spark(scene, onnx_bundle, tmp_path):
    op = _op(scene, onnx_bundle, tmp_path / "spark", spark_master="local[2]",
             detect_classes=["Developed", "Forest"])
    summary = op.execute(context={})  # the session stays up for later tests to reuse
    assert summary["spark_master"] == "local[2]" and summary["strips"] == 2
    assert summary["route"] == "fully-convolutional"
    assert set(summary["detections_per_class"]) <= {"Developed", "Forest"}


@pytest.mark.parametrize(
    ("options", "message"),
    [({"window_size": 200}, r"window of 200 px is larger than image .*scene\.tif "
                            r"\(192 × 160 px\)"),
     ({"stride": 0}, "stride must be a positive"),
     ({"stride": 33}, "stride 33 px is larger than the 32 px window"),
     ({"window_size": "big"}, "window_size must be a number"),
     ({"window_size": 31.5}, "whole number"),
     ({"geojson": "maybe"}, "geojson must be"),
     ({"detect_classes": ["plane"]}, r"cannot detect \['plane'\]"),
     ({"bundle_path": "/nonexistent/bundle"}, "bundle.json is missing"),
     ({"image_url": "/nonexistent/scene.tif"}, "cannot open image")],
)
def test_bad_input_fails_at_once(scene, onnx_bundle, tmp_path, options, message):
    op = _op(scene, onnx_bundle, tmp_path / "bad", **options)
    with pytest.raises(AirflowFailException, match=message):
        op.execute(context={})
    assert not (tmp_path / "bad").exists()


def test_geojson_for_a_png_fails_at_once(scene, onnx_bundle, tmp_path):
    op = _op(scene, onnx_bundle, tmp_path / "png", image_url=str(scene / "scene.png"),
             geojson="yes")
    with pytest.raises(AirflowFailException, match=r"scene\.png has no georeferencing"):
        op.execute(context={})
    summary = _op(scene, onnx_bundle, tmp_path / "png", image_url=str(scene / "scene.png"),
                  geojson="auto").execute(context={})
    assert not summary["georeferenced"] and "detections.geojson" not in summary["outputs"]


def test_on_kill_without_a_job_is_harmless(scene, onnx_bundle, tmp_path):
    _op(scene, onnx_bundle, tmp_path / "k").on_kill()
