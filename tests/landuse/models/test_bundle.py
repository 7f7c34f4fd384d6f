"""Bundles: atomic writes, and load errors that name the bundle and the field at fault."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from landuse.models.bundle import (
    SCHEMA_VERSION,
    Bundle,
    BundleError,
    BundleSpec,
    load_bundle,
    sha256_file,
    write_bundle,
)
from landuse.models.preprocessing import CAFFE_BGR, CNTK_ALEXNET, PreprocessSpec

SPEC = PreprocessSpec(input_size=16, channel_order="BGR", mean=(100.0, 110.0, 120.0))
NCHW = PreprocessSpec(input_size=16, channel_order="BGR", layout="NCHW", mean=(114.0,) * 3)


def _edit(folder, **changes):
    meta = folder / "bundle.json"
    raw = json.loads(meta.read_text())
    raw.update(changes)
    meta.write_text(json.dumps(raw))


def _error(path, *fragments):
    """A pytest.raises matching every fragment (escaped) in order."""
    pattern = ".*".join(re.escape(f) for f in (str(path), *fragments))
    return pytest.raises(BundleError, match=pattern)


# --- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("style", ["mean", "conv"])
def test_load_a_valid_bundle(onnx_kit, tmp_path, opset, style):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC, opset=opset, style=style)
    bundle = load_bundle(folder)
    assert bundle.path == folder
    assert bundle.spec.schema_version == SCHEMA_VERSION
    assert bundle.spec.classes == ("Developed", "Forest", "Shrub")
    assert bundle.spec.preprocessing == SPEC
    assert bundle.file("onnx") == folder / "model.onnx"
    assert bundle.onnx_sha256 == sha256_file(folder / "model.onnx")
    assert bundle.model_id == f"hand-built@{bundle.onnx_sha256[:12]}"


def test_the_model_hash_is_taken_once_per_version_of_the_file(onnx_kit, tmp_path,
                                                              monkeypatch):
    import landuse.models.bundle as bundle_module

    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    bundle = load_bundle(folder)
    calls = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda p: calls.append(p) or real(p))
    first = bundle.onnx_sha256
    assert bundle.model_id == f"hand-built@{first[:12]}" and first == real(folder / "model.onnx")
    assert len(calls) == 1
    # A model.onnx replaced in place (a new file renamed over it) is hashed again.
    other = onnx_kit.bundle(tmp_path / "other", SPEC, style="conv")
    shutil.copy(other / "model.onnx", folder / "model.new")
    (folder / "model.new").replace(folder / "model.onnx")
    assert bundle.onnx_sha256 == real(other / "model.onnx") != first
    assert len(calls) == 2


def test_load_accepts_str_paths_and_nchw_models(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "cntk", NCHW, opset=7, style="conv")
    assert load_bundle(str(folder)).spec.preprocessing.input_shape == (3, 16, 16)


def test_missing_bundle_json(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    (folder / "bundle.json").unlink()
    with _error(folder, "bundle.json is missing"):
        load_bundle(folder)
    with _error(tmp_path / "nowhere", "bundle.json is missing"):
        load_bundle(tmp_path / "nowhere")


def test_bundle_json_not_json(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    (folder / "bundle.json").write_text("{not json")
    with _error(folder, "bundle.json is not valid JSON"):
        load_bundle(folder)


def test_unknown_schema_version(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    _edit(folder, schema_version=SCHEMA_VERSION + 1)
    with _error(folder, "field schema_version", f"unknown schema_version {SCHEMA_VERSION + 1}"):
        load_bundle(folder)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"classes": ["Developed"]}, "field classes"),
        ({"classes": ["Forest", "Forest", "Shrub"]}, "field classes"),
        ({"formats": ["keras"]}, "field formats"),
        ({"formats": ["onnx", "pytorch"]}, "field formats"),
        ({"preprocessing": {"mean": [1.0, 2.0]}}, "field preprocessing"),
        ({"preprocessing": {"layout": "CHW"}}, "field preprocessing.layout"),
        ({"surprise": 1}, "field surprise"),
    ],
)
def test_invalid_fields_are_named(onnx_kit, tmp_path, changes, field):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    _edit(folder, **changes)
    with _error(folder, field):
        load_bundle(folder)


def test_missing_required_field_is_named(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    raw = json.loads((folder / "bundle.json").read_text())
    del raw["onnx_output"]
    (folder / "bundle.json").write_text(json.dumps(raw))
    with _error(folder, "field onnx_output"):
        load_bundle(folder)


@pytest.mark.parametrize(("fmt", "filename"), [("onnx", "model.onnx"), ("keras", "model.keras")])
def test_missing_model_file_listed_in_formats(onnx_kit, tmp_path, fmt, filename):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC, formats=("onnx", "keras"))
    (folder / filename).unlink()
    with _error(folder, f"formats lists {fmt} but {filename} is missing"):
        load_bundle(folder)


def test_unreadable_onnx(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    (folder / "model.onnx").write_bytes(b"\x00garbage\xff" * 10)
    with _error(folder, "model.onnx cannot be read"):
        load_bundle(folder)


def test_onnx_output_not_in_graph(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    _edit(folder, onnx_output="softmax_out")
    with _error(folder, "field onnx_output", "'softmax_out' is not an output", "probabilities"):
        load_bundle(folder)


def test_onnx_input_not_in_graph(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC, input_name="input_1")
    _edit(folder, onnx_input="image")
    with _error(folder, "field onnx_input", "'image' is not an input", "input_1"):
        load_bundle(folder)


def test_output_size_differs_from_class_count(onnx_kit, tmp_path):
    weights, bias = onnx_kit.weights(4)  # the network has four outputs ...
    folder = onnx_kit.bundle(tmp_path / "b", SPEC, weights=weights, bias=bias)
    _edit(folder, classes=["Developed", "Forest", "Shrub"])  # ... the bundle lists three
    with _error(folder, "field classes", "outputs 4 values but 3 classes"):
        load_bundle(folder)


def test_dynamic_output_size_is_accepted(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC, output_dim=None)
    assert load_bundle(folder).spec.classes == ("Developed", "Forest", "Shrub")


def test_nchw_spec_on_an_nhwc_model(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", NCHW, model_layout="NHWC")
    with _error(folder, "field preprocessing", "[16, 16, 3]", "NCHW (3, 16, 16)"):
        load_bundle(folder)


def test_nhwc_spec_on_an_nchw_model(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC, model_layout="NCHW")
    with _error(folder, "field preprocessing", "NHWC (16, 16, 3)"):
        load_bundle(folder)


def test_input_size_differs_from_the_model(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    _edit(folder, preprocessing=SPEC.model_copy(update={"input_size": 32}).model_dump())
    with _error(folder, "field preprocessing", "NHWC (32, 32, 3)"):
        load_bundle(folder)


def test_bundle_file_of_an_absent_format(onnx_kit, tmp_path):
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", SPEC))
    with _error(tmp_path / "b", "has no tflite model"):
        bundle.file("tflite")


def test_a_missing_int8_form_says_why(onnx_kit, tmp_path):
    """Asking for the int8 form of a bundle without one gives the reason recorded when the
    bundle was built (metrics.int8), or says that none was made."""
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    with _error(folder, "has no onnx-int8 model", "no int8 form was made for it"):
        load_bundle(folder).file("onnx-int8")
    _edit(folder, metrics={"int8": {"kept": False, "reason": "not faster: int8 9.0 vs fp32 "
                                                            "10.0 tiles/s"}})
    with _error(folder, "has no onnx-int8 model", "its int8 form was not kept when it was "
                "built: not faster: int8 9.0 vs fp32 10.0 tiles/s"):
        load_bundle(folder).file("onnx-int8")


# --- writing --------------------------------------------------------------------------------


def _spec(preprocessing=SPEC, **changes) -> BundleSpec:
    fields = dict(
        schema_version=1,
        name="written",
        classes=("Developed", "Forest", "Shrub"),
        preprocessing=preprocessing,
        backbone="none",
        method="imported",
        formats=("onnx",),
        onnx_input="image",
        onnx_output="probabilities",
    )
    return BundleSpec(**{**fields, **changes})


def _model_writer(onnx_kit, spec: PreprocessSpec = SPEC, n: int = 3):
    weights, bias = onnx_kit.weights(n)
    model = onnx_kit.model(spec.layout, spec.input_size, weights, bias)

    def write_models(folder):
        (folder / "model.onnx").write_bytes(model.SerializeToString())

    return write_models


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_write_bundle(onnx_kit, tmp_path):
    dest = tmp_path / "models" / "candidate"
    bundle = write_bundle(dest, _spec(metrics={"accuracy": 0.5}), _model_writer(onnx_kit))
    assert isinstance(bundle, Bundle) and bundle.path == dest
    assert sorted(p.name for p in dest.iterdir()) == ["bundle.json", "model.onnx"]
    assert load_bundle(dest).spec.metrics == {"accuracy": 0.5}
    assert [p.name for p in dest.parent.iterdir()] == ["candidate"]  # no temp folders
    assert dest.stat().st_mode & 0o777 == 0o755


def test_failing_write_models_leaves_nothing(onnx_kit, tmp_path):
    dest = tmp_path / "models" / "candidate"

    def write_models(folder):
        _model_writer(onnx_kit)(folder)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(dest, _spec(), write_models)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_failing_write_keeps_the_existing_bundle(onnx_kit, tmp_path):
    dest = tmp_path / "candidate"
    write_bundle(dest, _spec(name="first"), _model_writer(onnx_kit))
    before = _snapshot(dest)

    def write_models(folder):
        (folder / "model.onnx").write_bytes(b"half a model")
        raise KeyboardInterrupt  # even an interrupt must not leave a half-written bundle

    with pytest.raises(KeyboardInterrupt):
        write_bundle(dest, _spec(name="second"), write_models)
    assert _snapshot(dest) == before
    assert load_bundle(dest).spec.name == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["candidate"]


def test_invalid_new_bundle_is_never_published(onnx_kit, tmp_path):
    dest = tmp_path / "candidate"
    write_bundle(dest, _spec(name="first"), _model_writer(onnx_kit))
    before = _snapshot(dest)
    # A four-output network for three classes fails validation before the rename.
    with pytest.raises(BundleError, match="field classes"):
        write_bundle(dest, _spec(name="second"), _model_writer(onnx_kit, n=4))
    with pytest.raises(BundleError, match="field preprocessing"):
        write_bundle(dest, _spec(name="third", preprocessing=NCHW), _model_writer(onnx_kit))
    with pytest.raises(BundleError, match="formats lists keras"):
        write_bundle(dest, _spec(formats=("onnx", "keras")), _model_writer(onnx_kit))
    assert _snapshot(dest) == before
    assert [p.name for p in tmp_path.iterdir()] == ["candidate"]


def test_write_replaces_an_existing_bundle(onnx_kit, tmp_path):
    dest = tmp_path / "candidate"
    first_sha = write_bundle(dest, _spec(name="first"), _model_writer(onnx_kit)).onnx_sha256
    (dest / "stale.txt").write_text("from the old bundle")
    cntk = NCHW.model_copy(update={"input_size": 16})
    second = write_bundle(dest, _spec(name="second", preprocessing=cntk),
                          _model_writer(onnx_kit, cntk))
    assert second.spec.name == "second" and second.spec.preprocessing.layout == "NCHW"
    assert second.onnx_sha256 != first_sha  # (hashed from the file, so taken before)
    assert not (dest / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["candidate"]


def test_spec_defaults_and_json_round_trip():
    spec = _spec(preprocessing=CAFFE_BGR.model_copy(update={"input_size": 16}))
    assert spec.outputs_probabilities is True
    assert spec.lineage.manifests == {} and spec.metrics == {} and spec.created
    again = BundleSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert CNTK_ALEXNET.layout == "NCHW"


def test_copied_bundle_loads_elsewhere(onnx_kit, tmp_path):
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    shutil.copytree(folder, tmp_path / "copy")
    assert load_bundle(tmp_path / "copy").onnx_sha256 == load_bundle(folder).onnx_sha256


def test_dtype_that_does_not_match_the_model_input_is_named(onnx_kit, tmp_path):
    """A uint8 spec on a float model fails at load, not at the first prediction."""
    folder = onnx_kit.bundle(tmp_path / "b", SPEC)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["preprocessing"].update(dtype="uint8", mean=[0, 0, 0], std=[1, 1, 1], scale=1)
    (folder / "bundle.json").write_text(json.dumps(meta))
    with _error(folder, "preprocessing.dtype"):
        load_bundle(folder)
