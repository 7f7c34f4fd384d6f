"""A small CIFAR-style ONNX CNN for the sliding-window tests, built with ``onnx.helper``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landuse.models.preprocessing import PreprocessSpec

# The preprocessing of the tests' CNN bundles: 32 px windows, pixels scaled to [0, 1].
CNN_PREPROCESSING = PreprocessSpec(input_size=32, scale=1 / 255)


def small_cnn(classes: int, *, size: int = 32, layout: str = "NHWC", pad: int = 0,
              seed: int = 0, head: str = "gemm", channels: tuple[int, ...] = (8, 16, 16),
              lead: bool = False, uint8: bool = False):
    """A CIFAR-style ONNX CNN: 3 × 3 convolutions with ReLU, 2 × 2 max-pools between them,
    global average pooling, a hidden dense layer and a softmax (random He weights).

    ``pad=0`` gives valid convolutions (the form that can be made fully convolutional);
    ``pad=1`` pads each convolution (it cannot: a window's zero border is its own).
    ``head`` is ``gemm`` (Flatten + Gemm, as hand-built and CNTK models) or ``matmul``
    (Reshape + MatMul + Add, as TF exports). ``lead`` puts an Identity before the first
    convolution, so nothing can be folded into it; ``uint8`` takes uint8 pixels and casts
    them itself (as models of uint8 bundles do)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "image"
    if uint8:
        nodes.append(helper.make_node("Cast", [x], ["image_f"], to=TensorProto.FLOAT))
        x = "image_f"
    if lead:
        nodes.append(helper.make_node("Identity", [x], ["lead"]))
        x = "lead"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["x0"], perm=[0, 3, 1, 2]))
        x = "x0"
    cin = 3
    for i, cout in enumerate(channels):
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"c{i}_w"),
                  numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32),
                                          f"c{i}_b")]
        nodes += [helper.make_node("Conv", [x, f"c{i}_w", f"c{i}_b"], [f"c{i}"],
                                   kernel_shape=[3, 3], pads=[pad] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
        if i < len(channels) - 1:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"p{i}"
        cin = cout
    hidden = rng.normal(0, np.sqrt(2 / cin), (cin, 32)).astype(np.float32)
    out = rng.normal(0, 0.3, (32, classes)).astype(np.float32)
    inits += [numpy_helper.from_array(hidden, "h_w"),
              numpy_helper.from_array(rng.normal(0, 0.1, 32).astype(np.float32), "h_b"),
              numpy_helper.from_array(out.T.copy(), "o_w"),  # Gemm with transB=1
              numpy_helper.from_array(np.zeros(classes, np.float32), "o_b")]
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    if head == "gemm":
        nodes += [helper.make_node("Flatten", ["gap"], ["flat"]),
                  helper.make_node("Gemm", ["flat", "h_w", "h_b"], ["h"]),
                  helper.make_node("Relu", ["h"], ["hr"]),
                  helper.make_node("Gemm", ["hr", "o_w", "o_b"], ["logits"], transB=1)]
    else:
        inits.append(numpy_helper.from_array(np.array([-1, cin], np.int64), "flat_shape"))
        nodes += [helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "h_w"], ["hm"]),
                  helper.make_node("Add", ["hm", "h_b"], ["h"]),
                  helper.make_node("Relu", ["h"], ["hr"]),
                  helper.make_node("Gemm", ["hr", "o_w", "o_b"], ["logits"], transB=1,
                                   alpha=1.5, beta=0.5)]
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    shape = ["n", size, size, 3] if layout == "NHWC" else ["n", 3, size, size]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.UINT8 if uint8 else TensorProto.FLOAT,
                                       shape)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", classes])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def write_cnn_bundle(folder: Path, classes: tuple[str, ...], spec: PreprocessSpec,
                     **options) -> Path:
    """:func:`small_cnn` as a bundle folder (through the library's atomic writer)."""
    from landuse.models.bundle import BundleSpec, write_bundle

    model = small_cnn(len(classes), size=spec.input_size, layout=spec.layout, **options)
    bundle_spec = BundleSpec(schema_version=1, name="small-cnn", classes=classes,
                             preprocessing=spec, backbone="small-cnn", method="imported",
                             formats=("onnx",), onnx_input="image",
                             onnx_output="probabilities")
    write_bundle(folder, bundle_spec,
                 lambda f: (f / "model.onnx").write_bytes(model.SerializeToString()))
    return folder
