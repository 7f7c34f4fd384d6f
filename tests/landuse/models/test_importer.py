"""import-model: an external CNTK-era ONNX model (opset 9, CHW, BGR, minus 114) as a bundle."""

from __future__ import annotations

import numpy as np
import pytest

from landuse.cli import main
from landuse.models.bundle import BundleError, load_bundle
from landuse.models.importer import import_onnx
from landuse.models.preprocessing import CNTK_ALEXNET
from landuse.models.runners import OnnxRunner

CLASSES = ["Developed", "Forest", "Shrub"]
SIZE = 16
SPEC = CNTK_ALEXNET.model_copy(update={"input_size": SIZE})


@pytest.fixture
def cntk_model(onnx_kit, tmp_path):
    """A CNTK-style export: NCHW float input, opset 9, softmax over three classes."""
    weights, bias = onnx_kit.weights(len(CLASSES))
    model = onnx_kit.model("NCHW", SIZE, weights, bias, style="conv", opset=9,
                           input_name="data", output_name="z")
    path = tmp_path / "alexnet.onnx"
    path.write_bytes(model.SerializeToString())
    return path, weights, bias


def _expected(tiles, weights, bias, softmax):
    """What the model must output: BGR, minus 114, channel means, linear, softmax."""
    bgr = tiles[..., ::-1].astype(np.float64) - 114.0
    return softmax(bgr.mean(axis=(1, 2)) @ weights + bias)


def test_cli_imports_a_cntk_export_that_scores_as_trained(cntk_model, onnx_kit, tmp_path, capsys):
    path, weights, bias = cntk_model
    out = tmp_path / "bundle"
    code = main(["import-model", "--onnx", str(path), "--out", str(out), "--preprocessing",
                 "cntk-alexnet", "--input-size", str(SIZE), "--classes", ",".join(CLASSES),
                 "--name", "cntk-alexnet"])
    assert code == 0 and str(out) in capsys.readouterr().out
    bundle = load_bundle(out)
    assert bundle.spec.method == "imported" and bundle.spec.params["opset"] == 9
    assert (bundle.spec.onnx_input, bundle.spec.onnx_output) == ("data", "z")
    tiles = np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    got = OnnxRunner(bundle).predict(tiles)
    np.testing.assert_allclose(got, _expected(tiles, weights, bias, onnx_kit.softmax),
                               rtol=1e-4, atol=1e-6)


def test_logits_model_gets_a_softmax(onnx_kit, tmp_path):
    weights, bias = onnx_kit.weights(len(CLASSES))
    model = onnx_kit.model("NCHW", SIZE, weights, bias, opset=9, probabilities=False)
    path = tmp_path / "logits.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(BundleError, match="outputs_probabilities=False"):
        import_onnx(path, tmp_path / "b1", classes=CLASSES, preprocessing=SPEC, name="x")
    assert not (tmp_path / "b1").exists()
    bundle = import_onnx(path, tmp_path / "b2", classes=CLASSES, preprocessing=SPEC, name="x",
                         outputs_probabilities=False)
    probs = OnnxRunner(bundle).predict(np.zeros((2, SIZE, SIZE, 3), np.uint8))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_class_count_that_does_not_match_the_model(cntk_model, tmp_path):
    path, _, _ = cntk_model
    with pytest.raises(BundleError, match="classes"):
        import_onnx(path, tmp_path / "b", classes=[*CLASSES, "Barren"], preprocessing=SPEC,
                    name="x")
    assert not (tmp_path / "b").exists()


def test_layout_that_does_not_match_the_model(cntk_model, tmp_path):
    path, _, _ = cntk_model
    nhwc = SPEC.model_copy(update={"layout": "NHWC"})
    with pytest.raises(BundleError, match="preprocessing"):
        import_onnx(path, tmp_path / "b", classes=CLASSES, preprocessing=nhwc, name="x")


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BundleError, match=r"bad\.onnx"):
        import_onnx(bad, tmp_path / "b", classes=CLASSES, preprocessing=SPEC, name="x")
