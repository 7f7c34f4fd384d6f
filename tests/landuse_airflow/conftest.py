"""Fixtures for the operator tests: a throw-away Airflow home, PNG tiles, and two bundles.

* ``keras_bundle``: a tiny Keras CNN saved as model.keras, exported to ONNX with
  ``model.export(format="onnx")`` and converted to TFLite with ``tf.lite.TFLiteConverter``,
  written through :func:`landuse.models.bundle.write_bundle`, so all three runners serve
  the same network;
* ``onnx_bundle``: a hand-built ONNX graph (per-channel mean -> linear -> softmax) that numpy
  can recompute, for the Spark tests (no TensorFlow on the Spark workers).

No metadata DB is needed: operators are executed directly, and connections come from
``AIRFLOW_CONN_*`` environment variables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_home import use_throwaway_home

# Before anything imports Airflow (importing it writes airflow.cfg into AIRFLOW_HOME), so the
# tests never touch the project's own .airflow; another test folder may have done it.
use_throwaway_home()

from landuse import labels  # noqa: E402
from landuse.models.bundle import BundleSpec, write_bundle  # noqa: E402
from landuse.models.preprocessing import PreprocessSpec  # noqa: E402

SIZE = 32
CLASSES = labels.CLASSES
# Pixels scaled to [0, 1]: keeps the tiny random networks' logits in a sensible range.
SPEC = PreprocessSpec(input_size=SIZE, scale=1 / 255)


@dataclass(frozen=True)
class Tiles:
    """PNG tiles on disk, a labelled manifest of them, and their decoded pixels."""

    folder: Path
    manifest: Path
    pixels: np.ndarray  # (N, SIZE, SIZE, 3) uint8, in manifest order
    frame: pd.DataFrame


def write_tiles(folder: Path, n: int, seed: int = 0) -> np.ndarray:
    """``n`` PNG tiles tile-000.png... of random colour blocks (distinct predictions)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        base = rng.integers(0, 256, 3)
        noise = rng.integers(-40, 41, (SIZE, SIZE, 3))
        pixels[i] = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels[i]).save(folder / f"tile-{i:03d}.png")
    return pixels


@pytest.fixture(scope="session")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Tiles:
    """Twelve tiles with a manifest (one county-year, labels from the six classes)."""
    folder = tmp_path_factory.mktemp("tiles")
    pixels = write_tiles(folder, 12)
    frame = pd.DataFrame({
        "tile_id": [f"tile-{i:03d}" for i in range(len(pixels))],
        "county": "test-county",
        "year": 2016,
        "image_url": [str(folder / f"tile-{i:03d}.png") for i in range(len(pixels))],
        "label": [CLASSES[i % len(CLASSES)] for i in range(len(pixels))],
    })
    manifest = folder / "manifest.parquet"
    frame.to_parquet(manifest)
    return Tiles(folder, manifest, pixels, frame)


@dataclass(frozen=True)
class KerasBundle:
    """The bundle folder and the Keras model it was written from (the reference)."""

    path: Path
    model: Any


@pytest.fixture(scope="session")
def keras_bundle(tmp_path_factory: pytest.TempPathFactory) -> KerasBundle:
    """One tiny CNN in all three forms: model.keras, model.onnx and model.tflite."""
    import warnings

    import keras
    import tensorflow as tf

    from landuse.models.keras_trainer import _set_onnx_names

    keras.utils.set_random_seed(0)
    inputs = keras.Input(SPEC.input_shape, name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model(np.zeros((1, *SPEC.input_shape), np.float32))  # built before export
    spec = BundleSpec(
        schema_version=1, name="tiny-cnn", classes=CLASSES, preprocessing=SPEC,
        backbone="none", method="finetune-head", formats=("onnx", "keras", "tflite"),
        onnx_input="image", onnx_output="probabilities",
    )

    def write_models(folder: Path) -> None:
        model.save(folder / "model.keras")
        with warnings.catch_warnings():  # tf2onnx's and the converter's FutureWarnings
            warnings.simplefilter("ignore")
            model.export(str(folder / "model.onnx"), format="onnx", verbose=False)
            tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        _set_onnx_names(folder, spec)
        (folder / "model.tflite").write_bytes(tflite)

    dest = tmp_path_factory.mktemp("bundles") / "tiny-cnn"
    write_bundle(dest, spec, write_models)
    return KerasBundle(dest, model)


def linear_weights(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Weights (3, 6) and bias (6,) of the hand-built model; logits a few units apart."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 4, (3, len(CLASSES))).astype(np.float32),
            rng.normal(0, 1, len(CLASSES)).astype(np.float32))


def _reference_probabilities(pixels: np.ndarray) -> np.ndarray:
    """What the hand-built ONNX bundle must output, computed in numpy."""
    weights, bias = linear_weights()
    logits = (pixels.astype(np.float64) / 255).mean(axis=(1, 2)) @ weights + bias
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


@pytest.fixture(scope="session")
def onnx_reference() -> Callable[[np.ndarray], np.ndarray]:
    """The hand-built bundle's probabilities for uint8 tiles (N, H, W, 3), in numpy."""
    return _reference_probabilities


@pytest.fixture(scope="session")
def onnx_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """softmax(mean over pixels of x / 255 @ W + b), built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights, bias = linear_weights()
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "hand_built",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", len(CLASSES)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    spec = BundleSpec(
        schema_version=1, name="hand-built", classes=CLASSES, preprocessing=SPEC,
        backbone="none", method="imported", formats=("onnx",), onnx_input="image",
        onnx_output="probabilities",
    )
    dest = tmp_path_factory.mktemp("bundles") / "hand-built"
    write_bundle(dest, spec, lambda f: (f / "model.onnx").write_bytes(model.SerializeToString()))
    return dest
