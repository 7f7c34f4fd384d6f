"""Small hand-built ONNX bundles for tests (the ``onnx_kit`` fixture, and importable as
``onnx_kit`` from any test: pytest puts ``tests/`` on the path for its conftest).

The bundles are built with ``onnx.helper`` (no TensorFlow): a per-channel spatial mean, a
linear layer and a softmax, so every output can be recomputed by hand in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landuse.models.bundle import BundleSpec
from landuse.models.preprocessing import PreprocessSpec


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the reference the runners are checked against)."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


def linear_weights(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (3, n) float32 weight matrix and (n,) bias with well-separated logits."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, (3, n_classes)).astype(np.float32)
    bias = rng.normal(0, 0.5, n_classes).astype(np.float32)
    return weights, bias


def onnx_model(
    layout: str,
    size: int,
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    style: str = "mean",
    opset: int = 11,
    probabilities: bool = True,
    output_dim: int | None = -1,
    input_name: str = "image",
    output_name: str = "probabilities",
    input_dtype: str = "float32",
) -> Any:
    """An ONNX classifier: softmax(spatial mean of each input channel @ weights + bias).

    ``style='mean'`` is ReduceMean + MatMul + Add; ``style='conv'`` is a 1x1 Conv +
    GlobalAveragePool + Flatten (with a Transpose first for NHWC input), the way TF and
    CNTK exports look. ``output_dim`` -1 declares the true class count, None leaves it
    dynamic, anything else declares that (wrong) size. A ``uint8`` input is cast to float
    first (raw pixels, as quantized models take them).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = weights.shape[1]
    shape = ["batch", 3, size, size] if layout == "NCHW" else ["batch", size, size, 3]
    elem = TensorProto.UINT8 if input_dtype == "uint8" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(input_name, elem, shape)]
    nodes = []
    x = input_name
    if input_dtype == "uint8":
        nodes.append(helper.make_node("Cast", [x], ["pixels"], to=TensorProto.FLOAT))
        x = "pixels"
    if style == "mean":
        axes = [2, 3] if layout == "NCHW" else [1, 2]
        nodes += [
            helper.make_node("ReduceMean", [x], ["pooled"], axes=axes, keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
        ]
        inits = [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")]
    elif style == "conv":
        if layout == "NHWC":
            nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
            x = "nchw"
        kernel = np.ascontiguousarray(weights.T.reshape(n, 3, 1, 1))
        nodes += [
            helper.make_node("Conv", [x, "W", "b"], ["conv"], kernel_shape=[1, 1]),
            helper.make_node("GlobalAveragePool", ["conv"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["logits"], axis=1),
        ]
        inits = [numpy_helper.from_array(kernel, "W"), numpy_helper.from_array(bias, "b")]
    else:  # pragma: no cover - test helper misuse
        raise ValueError(style)
    if probabilities:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    else:
        nodes.append(helper.make_node("Identity", ["logits"], [output_name]))
    declared = n if output_dim == -1 else output_dim
    outputs = [
        helper.make_tensor_value_info(
            output_name, TensorProto.FLOAT, ["batch", declared if declared else "classes"]
        )
    ]
    ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if ir_version < 4:  # IR 3 (CNTK's era) lists initializers among the graph inputs too
        inputs += [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
        ]
    graph = helper.make_graph(nodes, "landuse_test", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version,
        producer_name="landuse-tests",
    )
    onnx.checker.check_model(model)
    return model


def write_onnx_bundle(
    folder: Path,
    spec: PreprocessSpec,
    classes: Sequence[str] = ("Developed", "Forest", "Shrub"),
    *,
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    model_layout: str | None = None,
    formats: Sequence[str] = ("onnx",),
    outputs_probabilities: bool = True,
    **model_options: Any,
) -> Path:
    """Write model.onnx and bundle.json straight into ``folder`` (no validation on the way,
    so tests can make broken bundles); other listed formats get placeholder files."""
    if weights is None or bias is None:
        weights, bias = linear_weights(len(classes))
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx_model(
        model_layout or spec.layout,
        spec.input_size,
        weights,
        bias,
        probabilities=outputs_probabilities,
        input_dtype=spec.dtype,
        **model_options,
    )
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    for fmt in formats:
        if fmt != "onnx":
            (folder / f"model.{fmt}").write_bytes(b"placeholder")
    bundle_spec = BundleSpec(
        schema_version=1,
        name="hand-built",
        classes=tuple(classes),
        preprocessing=spec,
        backbone="none",
        method="imported",
        formats=tuple(formats),
        onnx_input=model_options.get("input_name", "image"),
        onnx_output=model_options.get("output_name", "probabilities"),
        outputs_probabilities=outputs_probabilities,
    )
    (folder / "bundle.json").write_text(bundle_spec.model_dump_json(indent=2))
    return folder
