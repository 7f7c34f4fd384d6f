"""Keras transfer learning on a tiny real split: the bundle it writes, its metrics, ONNX/Keras
agreement, and bad splits that fail clearly without leaving anything behind."""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pytest

from landuse import labels, storage
from landuse.models.bundle import Lineage, load_bundle
from landuse.models.keras_trainer import PARITY_TOLERANCE, TrainConfig, train_keras
from landuse.models.preprocessing import CAFFE_BGR
from landuse.models.runners import KerasRunner, OnnxRunner, open_runner
from landuse.tiles import read_tiles

CONFIG = TrainConfig(epochs=2, batch_size=16, dense_units=32, seed=1)


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """One SqueezeNet head trained for two epochs: (result, destination)."""
    dest = tmp_path_factory.mktemp("trained") / "models" / "squeezenet-head"
    lineage = Lineage(dataset_uri=tiny_dataset.url, split_sha256="ab" * 32)
    result = train_keras(tiny_dataset.url, dest, CONFIG, name="tiny", lineage=lineage)
    return result, dest


def test_bundle_loads_with_onnx_and_keras(trained, tiny_dataset):
    result, dest = trained
    bundle = load_bundle(dest)
    assert result.bundle.path == dest
    assert bundle.spec.formats == ("onnx", "keras")
    assert sorted(p.name for p in dest.iterdir()) == ["bundle.json", "model.keras", "model.onnx"]
    seen = set(tiny_dataset.train["label"])
    assert bundle.spec.classes == tuple(c for c in labels.CLASSES if c in seen)
    assert bundle.spec.preprocessing == CAFFE_BGR
    assert (bundle.spec.onnx_input, bundle.spec.onnx_output) == ("image", "probabilities")
    assert bundle.spec.outputs_probabilities
    assert (bundle.spec.name, bundle.spec.backbone, bundle.spec.method) == (
        "tiny", "squeezenet", "head")
    assert bundle.spec.lineage.dataset_uri == tiny_dataset.url
    assert bundle.spec.params == CONFIG.model_dump()
    assert bundle.model_id.startswith("tiny@")


def test_no_leftovers_next_to_the_bundle(trained):
    _, dest = trained
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]


def test_history_has_both_epochs(trained):
    result, _ = trained
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(result.history[key]) == CONFIG.epochs, key


def test_metrics(trained, tiny_dataset):
    result, dest = trained
    metrics = load_bundle(dest).spec.metrics
    assert metrics == result.metrics
    classes = list(load_bundle(dest).spec.classes)
    val = tiny_dataset.validation
    assert metrics["tiles"] == len(val)
    assert metrics["classes"] == classes
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 0.0 <= metrics["group_accuracy"] <= 1.0
    assert set(metrics["per_class"]) == set(classes)
    for c in classes:
        entry = metrics["per_class"][c]
        assert set(entry) == {"precision", "recall", "support"}
        assert entry["support"] == int((val["label"] == c).sum())
    matrix = metrics["confusion"]
    assert len(matrix) == len(classes) and all(len(row) == len(classes) for row in matrix)
    assert sum(map(sum, matrix)) == len(val)
    assert [sum(row) for row in matrix] == [int((val["label"] == c).sum()) for c in classes]
    assert 0.0 <= metrics["onnx_keras_max_abs_diff"] <= PARITY_TOLERANCE


def test_keras_and_onnx_runners_agree_on_validation_tiles(trained, tiny_dataset):
    _, dest = trained
    bundle = load_bundle(dest)
    tiles = read_tiles(tiny_dataset.validation, bundle.spec.preprocessing)
    onnx_probs = OnnxRunner(bundle).predict(tiles)
    keras_probs = open_runner(bundle, "keras").predict(tiles)
    assert isinstance(open_runner(bundle, "keras"), KerasRunner)
    assert onnx_probs.shape == (len(tiles), len(bundle.spec.classes))
    assert abs(onnx_probs - keras_probs).max() <= PARITY_TOLERANCE
    assert abs(onnx_probs.sum(axis=1) - 1).max() < 1e-5
    # The recorded metrics are those of the ONNX path scoring will use.
    predicted = [bundle.spec.classes[i] for i in onnx_probs.argmax(axis=1)]
    accuracy = (pd.Series(predicted) == tiny_dataset.validation["label"]).mean()
    assert bundle.spec.metrics["accuracy"] == pytest.approx(accuracy)


# --- unusable input: a clear ValueError and no bundle ------------------------------------------


def _write_split(frame: pd.DataFrame, folder) -> str:
    url = str(folder / "split.parquet")
    storage.write_parquet(url, pa.Table.from_pandas(frame, preserve_index=False))
    return url


def _assert_nothing_written(dest):
    assert not dest.exists()
    if dest.parent.exists():
        assert list(dest.parent.iterdir()) == []  # no temp or half-written folders


def _fails(split: pd.DataFrame, tmp_path, match: str) -> None:
    url = _write_split(split, tmp_path)
    dest = tmp_path / "models" / "candidate"
    with pytest.raises(ValueError, match=match):
        train_keras(url, dest, CONFIG)
    _assert_nothing_written(dest)


def test_empty_training_set(tiny_dataset, tmp_path):
    _fails(tiny_dataset.validation, tmp_path, "has no training tiles")


def test_single_class_training_set(tiny_dataset, tmp_path):
    split = tiny_dataset.split
    one = split[(split["split"] == "validation") | (split["label"] == "Developed")]
    _fails(one, tmp_path, r"training holds one class \(\('Developed',\)\); a classifier needs two")


def test_validation_class_training_never_saw(tiny_dataset, tmp_path):
    split = tiny_dataset.split
    val_only = sorted(set(tiny_dataset.validation["label"]))[-1]
    narrowed = split[(split["split"] == "validation") | (split["label"] != val_only)]
    assert narrowed[narrowed["split"] == "train"]["label"].nunique() >= 2
    _fails(narrowed, tmp_path, rf"validation holds \['{val_only}'\], which training never saw")


def test_training_labels_that_are_not_classes(tiny_dataset, tmp_path):
    split = tiny_dataset.split.copy()
    split.loc[split.index[0], "label"] = "Ice"  # perennial ice/snow: NLCD, but not a class
    _fails(split, tmp_path, r"training labels \['Ice'\] are not land-use classes")


def test_truncated_scene_in_the_training_set(tiny_dataset, tmp_path):
    split = tiny_dataset.split.copy()
    bad = tmp_path / "scenes" / "truncated.tif"
    bad.parent.mkdir()
    good = open(split["scene_url"].iloc[1], "rb").read()
    bad.write_bytes(good[: len(good) // 3])  # cut short, as an interrupted copy leaves it
    split.loc[split.index[1], "scene_url"] = str(bad)
    _fails(split, tmp_path, f"tile {split['tile_id'].iloc[1]}: .*{re.escape(str(bad))}")


def test_corrupt_chip_in_the_training_set(tiny_dataset, tmp_path):
    split = tiny_dataset.split.copy()
    bad = tmp_path / "tiles" / "corrupt.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    split.loc[split.index[1], ["scene_url", "image_url"]] = [None, str(bad)]  # chip only
    _fails(split, tmp_path, re.escape(f"{bad}: not a readable image"))


def test_missing_scene_in_the_validation_set(tiny_dataset, tmp_path):
    split = tiny_dataset.split.copy()
    row = split.index[split["split"] == "validation"][0]
    missing = str(tmp_path / "scenes" / "gone.tif")
    split.loc[row, "scene_url"] = missing
    _fails(split, tmp_path, f"tile {split.loc[row, 'tile_id']}: .*{re.escape(missing)}")


def test_training_without_validation_tiles(tiny_dataset, tmp_path):
    url = _write_split(tiny_dataset.train, tmp_path)
    dest = tmp_path / "models" / "no-validation"
    result = train_keras(url, dest, TrainConfig(epochs=1, batch_size=16, dense_units=8))
    bundle = load_bundle(dest)
    # No validation report; the ONNX/Keras check ran on training tiles instead.
    assert set(bundle.spec.metrics) == {"onnx_keras_max_abs_diff"}
    assert bundle.spec.metrics["onnx_keras_max_abs_diff"] <= PARITY_TOLERANCE
    assert "val_loss" not in result.history and len(result.history["loss"]) == 1
    assert [p.name for p in dest.parent.iterdir()] == ["no-validation"]
