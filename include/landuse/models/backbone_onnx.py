"""A frozen Keras backbone as ONNX: input ``image``, output pooled ``features``.

The first half of the featurize-and-classify route: Spark workers run this graph to
featurize tiles (:mod:`landuse.models.spark_features`), and each bundle is this graph with
a classifier appended (:mod:`landuse.models.onnx_head`). The export is checked against
Keras before it is kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from landuse.models.backbones import build_backbone
from landuse.models.keras_trainer import PARITY_TOLERANCE
from landuse.models.preprocessing import PreprocessSpec, to_tensor

if TYPE_CHECKING:
    import onnx

INPUT = "image"
FEATURES = "features"


def export_backbone_onnx(
    backbone_name: str,
    dest_path: str | Path,
    weights: str = "imagenet",
    input_size: int = 224,
) -> tuple[Path, PreprocessSpec]:
    """Export a Keras backbone to ONNX: input ``image``, output ``features`` (pooled).

    Args:
        backbone_name: ``squeezenet`` or ``resnet50`` (see
            :func:`~landuse.models.backbones.build_backbone`).
        dest_path: the ONNX file to write (replaced atomically).
        weights: ``imagenet``, a local weights file, or ``random``.
        input_size: square input side in pixels.

    Returns:
        The written path and the preprocessing the network expects.

    Raises:
        ValueError: unknown backbone or unusable weights, or the export disagrees with Keras.
    """
    import onnx

    backbone = build_backbone(backbone_name, weights, input_size)
    spec = backbone.preprocessing
    rng = np.random.default_rng(0)
    probe = to_tensor(rng.integers(0, 256, (2, input_size, input_size, 3), dtype=np.uint8), spec)
    keras_out = np.asarray(backbone.model(probe, training=False))  # Keras exports called models
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        backbone.model.export(str(tmp), format="onnx", verbose=False)
        model = onnx.load(str(tmp))
        _rename_io(model, INPUT, FEATURES)
        dims = [d.dim_value or None for d in model.graph.output[0].type.tensor_type.shape.dim]
        if dims[-1:] != [backbone.features]:
            raise ValueError(
                f"backbone {backbone_name}: ONNX output shape {dims}, expected (N, "
                f"{backbone.features}) pooled features"
            )
        onnx.save(model, str(tmp))
        onnx_out = onnx_session(model.SerializeToString(), threads=1).run(
            [FEATURES], {INPUT: probe}
        )[0]
        scale = max(1.0, float(np.abs(keras_out).max()))
        diff = float(np.abs(onnx_out - keras_out).max())
        if diff > PARITY_TOLERANCE * scale:  # relative: pooled features are not probabilities
            raise ValueError(
                f"ONNX export of backbone {backbone_name} disagrees with Keras: max abs diff "
                f"{diff:.2e} for features up to {scale:.1f}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest, spec


def _rename_io(model: onnx.ModelProto, input_name: str, output_name: str) -> None:
    """Name the graph's first input and output (the exporter's names are generated)."""
    graph = model.graph
    renames = {graph.input[0].name: input_name, graph.output[0].name: output_name}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)
    graph.input[0].name = input_name
    graph.output[0].name = output_name


def onnx_session(model: bytes | str, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads and no inter-op pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
