"""Networks made fully convolutional: CNNs of either layout and head, at several strides,
and with the bundle's preprocessing inside, agree window by window with the per-window
route on the collage."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from landuse.models.bundle import load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.windows.fcn import FULLY_CONVOLUTIONAL, choose_route
from landuse.windows.fcn_model import PARITY_TOLERANCE, load_fcn
from landuse.windows.job import image_grid, score_in_process

from .cnn_kit import CNN_PREPROCESSING, write_cnn_bundle
from .conftest import CLASSES


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
    spec = CNN_PREPROCESSING.model_copy(update={"layout": layout})
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
