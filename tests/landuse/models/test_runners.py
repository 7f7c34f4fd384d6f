"""Runners: ONNX (old CNTK-era opsets included), Keras and TFLite give the probabilities the
bundle's preprocessing and network imply, computed independently by hand in numpy."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from landuse.models.bundle import BundleError, load_bundle
from landuse.models.preprocessing import PreprocessSpec, to_tensor
from landuse.models.runners import (
    KerasRunner,
    OnnxRunner,
    TFLiteRunner,
    open_runner,
    softmax,
)

SIZE = 16
CLASSES = ("Developed", "Forest", "Shrub")
CNTK = PreprocessSpec(input_size=SIZE, channel_order="BGR", layout="NCHW", mean=(114.0,) * 3)
BGR = PreprocessSpec(input_size=SIZE, channel_order="BGR", mean=(100.0, 110.0, 120.0))


def _tiles(n: int = 5, seed: int = 0) -> np.ndarray:
    """Tiles whose channel means differ a lot, so wrong channel order shows in the output."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)
    tiles[..., 0] //= 4  # little red, lots of blue
    tiles[..., 2] = 255 - tiles[..., 2] // 4
    return tiles


def _by_hand(tiles, weights, bias, *, bgr, mean, scale=1.0, std=(1.0, 1.0, 1.0)):
    """softmax(mean over the tile of each preprocessed channel @ weights + bias), float64."""
    x = tiles.astype(np.float64)
    if bgr:
        x = x[..., ::-1]
    channel_means = ((x * scale - np.asarray(mean)) / np.asarray(std)).mean(axis=(1, 2))
    z = channel_means @ weights.astype(np.float64) + bias.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# --- ONNX -----------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("style", ["conv", "mean"])
def test_onnx_runner_cntk_style_chw_bgr_model(onnx_kit, tmp_path, opset, style):
    weights, bias = onnx_kit.weights(3, seed=opset)
    bundle = load_bundle(
        onnx_kit.bundle(tmp_path / "cntk", CNTK, CLASSES, weights=weights, bias=bias,
                        opset=opset, style=style)
    )
    tiles = _tiles()
    probabilities = OnnxRunner(bundle).predict(tiles)
    expected = _by_hand(tiles, weights, bias, bgr=True, mean=(114.0,) * 3)
    assert probabilities.shape == (5, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    # The channel order matters for these tiles: RGB input would give other answers.
    wrong = _by_hand(tiles, weights, bias, bgr=False, mean=(114.0,) * 3)
    assert np.abs(wrong - expected).max() > 1e-2


def test_onnx_runner_nhwc_transpose_conv_opset11(onnx_kit, tmp_path):
    spec = PreprocessSpec(input_size=SIZE, scale=1 / 255, mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225))
    weights, bias = onnx_kit.weights(4, seed=3)
    weights *= 40  # normalised inputs are small; make the classes distinguishable
    classes = ("Developed", "Forest", "Shrub", "Cultivated")
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", spec, classes, weights=weights,
                                         bias=bias, opset=11, style="conv"))
    tiles = _tiles()
    expected = _by_hand(tiles, weights, bias, bgr=False, mean=spec.mean, scale=1 / 255,
                        std=spec.std)
    np.testing.assert_allclose(OnnxRunner(bundle).predict(tiles), expected, rtol=1e-5,
                               atol=1e-6)


def test_logits_output_gets_softmax(onnx_kit, tmp_path):
    weights, bias = onnx_kit.weights(3, seed=1)
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", BGR, CLASSES, weights=weights,
                                         bias=bias, outputs_probabilities=False))
    assert bundle.spec.outputs_probabilities is False
    runner = open_runner(bundle, "onnx")
    tiles = _tiles()
    x = runner.predict(tiles)
    raw = runner.session.run(None, {"image": to_tensor(tiles, BGR)})[0]
    assert not np.allclose(raw.sum(axis=1), 1.0)  # the network really returns logits
    expected = _by_hand(tiles, weights, bias, bgr=True, mean=BGR.mean)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x.sum(axis=1), 1.0, rtol=1e-6)


def test_predict_tensor_equals_predict_on_preprocessed_tiles(onnx_kit, tmp_path):
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", BGR, CLASSES))
    runner = OnnxRunner(bundle, threads=2)
    tiles = _tiles(3)
    np.testing.assert_array_equal(runner.predict(tiles),
                                  runner.predict_tensor(to_tensor(tiles, BGR)))


def test_runner_rejects_an_output_size_other_than_the_classes(onnx_kit, tmp_path):
    weights, bias = onnx_kit.weights(4)
    folder = onnx_kit.bundle(tmp_path / "b", BGR, (*CLASSES, "Barren"), weights=weights,
                             bias=bias, output_dim=None)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["classes"] = list(CLASSES)  # the graph's output size is dynamic: load cannot tell
    (folder / "bundle.json").write_text(json.dumps(meta))
    runner = OnnxRunner(load_bundle(folder))
    with pytest.raises(BundleError, match=r"field classes: the onnx model returned 4 values "
                       r"for 3 classes"):
        runner.predict(_tiles(2))


def test_softmax_is_stable():
    out = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


# --- open_runner and layout checks ----------------------------------------------------------


def test_open_runner_unknown_framework(onnx_kit, tmp_path):
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", BGR, CLASSES))
    with pytest.raises(BundleError, match=r"unknown framework 'torch'.*onnx.*keras.*tflite"):
        open_runner(bundle, "torch")


@pytest.mark.parametrize("framework", ["keras", "tflite"])
def test_open_runner_missing_form(onnx_kit, tmp_path, framework):
    folder = onnx_kit.bundle(tmp_path / "b", BGR, CLASSES)
    with pytest.raises(BundleError, match=re.escape(f"bundle {folder} has no {framework} model")):
        open_runner(load_bundle(folder), framework)


@pytest.mark.parametrize(("framework", "cls"), [("keras", KerasRunner), ("tflite", TFLiteRunner)])
def test_keras_and_tflite_runners_need_nhwc(onnx_kit, tmp_path, framework, cls):
    folder = onnx_kit.bundle(tmp_path / "b", CNTK, CLASSES, formats=("onnx", framework))
    bundle = load_bundle(folder)
    message = f"bundle {folder}: field preprocessing.layout: the {framework} runner needs NHWC"
    with pytest.raises(BundleError, match=re.escape(message)):
        open_runner(bundle, framework)
    with pytest.raises(BundleError, match=r"preprocessing\.layout"):
        cls(bundle)


# --- Keras and TFLite: a tiny model, converted in the test ------------------------------------


def _tiny_keras(weights, bias):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(len(bias), activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("probabilities").set_weights([weights, bias])
    return model


def _tflite(model, quantize: bool = False) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        rng = np.random.default_rng(0)

        def representative():
            for _ in range(16):
                yield [rng.integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(converter.convert())


@pytest.fixture(scope="module")
def three_form_bundle(onnx_kit, tmp_path_factory):
    """One network as ONNX (hand-built), Keras and float TFLite, BGR minus mean, NHWC."""
    weights, bias = onnx_kit.weights(3, seed=5)
    folder = onnx_kit.bundle(tmp_path_factory.mktemp("three") / "b", BGR, CLASSES,
                             weights=weights, bias=bias, formats=("onnx", "keras", "tflite"))
    model = _tiny_keras(weights, bias)
    model.save(folder / "model.keras")
    (folder / "model.tflite").write_bytes(_tflite(model))
    return load_bundle(folder), weights, bias


def test_onnx_keras_and_tflite_agree(three_form_bundle):
    bundle, weights, bias = three_form_bundle
    tiles = _tiles(6, seed=2)
    expected = _by_hand(tiles, weights, bias, bgr=True, mean=BGR.mean)
    outs = {fw: open_runner(bundle, fw).predict(tiles) for fw in ("onnx", "keras", "tflite")}
    for framework, out in outs.items():
        assert out.shape == (6, 3) and out.dtype == np.float32, framework
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6, err_msg=framework)
    np.testing.assert_allclose(outs["tflite"], outs["keras"], atol=1e-5, rtol=0)


def test_tflite_runner_follows_changing_batch_sizes(three_form_bundle):
    bundle, _, _ = three_form_bundle
    runner = TFLiteRunner(bundle, threads=1)
    tiles = _tiles(4, seed=9)
    whole = runner.predict(tiles)
    parts = np.concatenate([runner.predict(tiles[:1]), runner.predict(tiles[1:])])
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-6)
    np.testing.assert_allclose(runner.predict(tiles), whole, rtol=0, atol=1e-6)


def test_quantized_tflite_dequantizes_its_output(onnx_kit, tmp_path):
    raw = PreprocessSpec(input_size=SIZE, dtype="uint8")
    weights, bias = onnx_kit.weights(3, seed=6)
    folder = onnx_kit.bundle(tmp_path / "q", raw, CLASSES, weights=weights, bias=bias,
                             formats=("onnx", "keras", "tflite"))
    model = _tiny_keras(weights, bias)
    model.save(folder / "model.keras")
    (folder / "model.tflite").write_bytes(_tflite(model, quantize=True))
    bundle = load_bundle(folder)
    runner = TFLiteRunner(bundle)
    assert runner._in["dtype"] == np.uint8 and runner._out["dtype"] == np.uint8
    tiles = _tiles(4, seed=4)
    expected = _by_hand(tiles, weights, bias, bgr=False, mean=(0.0, 0.0, 0.0))
    quantized = runner.predict(tiles)
    assert quantized.dtype == np.float32
    np.testing.assert_allclose(quantized, expected, atol=0.02)  # 8-bit output steps are 1/256
    np.testing.assert_allclose(open_runner(bundle, "keras").predict(tiles), expected, rtol=1e-5)
    np.testing.assert_allclose(open_runner(bundle, "onnx").predict(tiles), expected, rtol=1e-5)
