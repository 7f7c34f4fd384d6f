"""The int8 form of a bundle: made at training time, checked on validation tiles, used only
when asked, and named apart in predictions."""

from __future__ import annotations

import numpy as np

from landuse.models.bundle import load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.models.quantize import INT8, add_int8
from landuse.models.runners import OnnxRunner
from landuse.tiles import read_tiles

CLASSES = ("Developed", "Forest", "Shrub")
SPEC = PreprocessSpec(input_size=64)


def test_int8_form_is_checked_and_used_only_when_asked(onnx_kit, tiny_dataset, tmp_path):
    weights, bias = onnx_kit.weights(len(CLASSES), seed=1)
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", SPEC, CLASSES, weights=weights,
                                         bias=bias))
    val = tiny_dataset.validation
    tiles = read_tiles(val, SPEC)
    calibration = read_tiles(tiny_dataset.train.iloc[:16], SPEC)

    out = add_int8(bundle, calibration, tiles, list(val["label"]))
    assert INT8 in out.spec.formats and out.file(INT8).is_file()
    assert out.model_id == bundle.model_id  # model.onnx is untouched
    fp32, q = OnnxRunner(out).predict(tiles), OnnxRunner(out, int8=True).predict(tiles)
    m = out.spec.metrics["int8"]
    assert m["tiles"] == len(val)
    assert m["agreement"] == round(float(np.mean(fp32.argmax(1) == q.argmax(1))), 4)
    assert m["agreement"] >= 0.9 and np.abs(fp32 - q).max() < 0.1
    assert OnnxRunner(out).model_id == bundle.model_id
    assert OnnxRunner(out, int8=True).model_id == f"{bundle.model_id}+int8"
    assert load_bundle(out.path).spec.formats.count(INT8) == 1

    # a model that cannot be quantized keeps its fp32 form and says why
    broken = add_int8(out, np.zeros((2, 8, 8, 5), np.uint8), tiles, list(val["label"]))
    assert INT8 not in broken.spec.formats and not (broken.path / "model.int8.onnx").exists()
    assert broken.spec.metrics["int8"]["error"]
    assert broken.model_id == bundle.model_id
