"""A bundle's fully convolutional model: kept in the bundle folder, and derived again when
the model or its preprocessing changes."""

from __future__ import annotations

import json

import onnx

from landuse.models.bundle import load_bundle
from landuse.windows.fcn_model import SOURCE_TAG, fcn_file_name, load_fcn, source_key


def test_a_new_preprocessing_derives_the_model_again(cnn_bundle, tmp_path):
    """The preprocessing is inside the derived model: the same model.onnx with another
    preprocessing must not reuse it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cnn_bundle, copy)
    load_fcn(load_bundle(copy), 32, 16)
    spec = json.loads((copy / "bundle.json").read_text())
    spec["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    (copy / "bundle.json").write_text(json.dumps(spec))
    bundle = load_bundle(copy)
    stored = onnx.load(str(copy / fcn_file_name(32, 16)))
    assert {p.key: p.value for p in stored.metadata_props}[SOURCE_TAG] != source_key(bundle)
    load_fcn(bundle, 32, 16)
    renewed = onnx.load(str(copy / fcn_file_name(32, 16)))
    assert {p.key: p.value for p in renewed.metadata_props}[SOURCE_TAG] == source_key(bundle)


def test_the_model_is_kept_in_the_bundle_and_renewed_when_stale(cnn_bundle):
    bundle = load_bundle(cnn_bundle)
    path = cnn_bundle / fcn_file_name(32, 16)
    load_fcn(bundle, 32, 16)
    model = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]  # the pixels as GDAL reads them
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    props = {p.key: p.value for p in model.metadata_props}
    assert props[SOURCE_TAG] == source_key(bundle)
    ops = {n.op_type for n in model.graph.node}
    assert "GlobalAveragePool" not in ops and "Gemm" not in ops and "AveragePool" in ops
    # A model derived from another model.onnx is not used: it is derived again.
    props[SOURCE_TAG] = "0" * 64
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    load_fcn(bundle, 32, 16)
    renewed = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert renewed[SOURCE_TAG] == source_key(bundle)
    assert load_bundle(cnn_bundle).model_id == bundle.model_id  # the bundle is the same
