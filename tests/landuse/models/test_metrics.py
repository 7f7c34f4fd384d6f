"""Metrics: precision reads a confusion column, recall a row (the seed had them swapped), group
accuracy, unknown labels, and the confusion PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from landuse.labels import GROUPS
from landuse.models.metrics import confusion, confusion_png, report

CLASSES = ["Developed", "Forest", "Shrub", "Cultivated"]
# Rows truth, columns prediction (worked out by hand):
#              Developed Forest Shrub Cultivated
# Developed        2       1      0       0
# Forest           1       0      1       0
# Shrub            0       0      1       0
# Cultivated       1       0      0       0
TRUTH = ["Developed", "Developed", "Developed", "Forest", "Forest", "Shrub", "Cultivated"]
PREDICTED = ["Developed", "Developed", "Forest", "Developed", "Shrub", "Shrub", "Developed"]


def test_confusion_rows_are_truth_columns_predictions():
    matrix = confusion(TRUTH, PREDICTED, CLASSES)
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[2, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]


def test_precision_is_column_wise_and_recall_row_wise():
    metrics = report(TRUTH, PREDICTED, CLASSES)
    per_class = metrics["per_class"]
    # Developed: 2 right of 4 predicted (column), of 3 true (row).
    assert per_class["Developed"] == {"precision": 0.5, "recall": pytest.approx(2 / 3),
                                      "support": 3}
    assert per_class["Forest"] == {"precision": 0.0, "recall": 0.0, "support": 2}
    # Shrub: 1 right of 2 predicted, of 1 true: swapping the formulas would give 1.0 and 0.5.
    assert per_class["Shrub"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    # Cultivated is never predicted: precision undefined, recall 0.
    assert per_class["Cultivated"] == {"precision": None, "recall": 0.0, "support": 1}
    assert metrics["accuracy"] == pytest.approx(3 / 7)
    assert metrics["tiles"] == 7
    assert metrics["classes"] == CLASSES
    assert metrics["confusion"] == [[2, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]


def test_group_accuracy():
    metrics = report(TRUTH, PREDICTED, CLASSES)
    # Groups: Developed, Undeveloped (Forest, Shrub), Cultivated. Forest->Shrub is a class
    # error but not a group error: 4 of 7 tiles are in the right group.
    assert metrics["group_accuracy"] == pytest.approx(4 / 7)
    # Rows truth, columns prediction, over every group in GROUPS order (worked out by hand).
    by_hand = {("Developed", "Developed"): 2, ("Developed", "Undeveloped"): 1,
               ("Cultivated", "Developed"): 1,
               ("Undeveloped", "Developed"): 1, ("Undeveloped", "Undeveloped"): 2}
    groups = metrics["groups"]
    assert groups == list(GROUPS) and {"Developed", "Cultivated", "Undeveloped"} <= set(groups)
    assert metrics["group_confusion"] == [[by_hand.get((t, p), 0) for p in groups]
                                          for t in groups]


def test_perfect_and_empty_reports():
    perfect = report(["Forest", "Developed"], ["Forest", "Developed"], CLASSES)
    assert perfect["accuracy"] == 1.0 and perfect["group_accuracy"] == 1.0
    assert perfect["per_class"]["Shrub"] == {"precision": None, "recall": None, "support": 0}
    empty = report([], [], CLASSES)
    assert empty["tiles"] == 0 and empty["accuracy"] is None
    assert "group_accuracy" not in empty
    assert empty["confusion"] == [[0] * 4] * 4


def test_classes_outside_the_land_use_set_have_no_groups():
    metrics = report(["a", "b", "b"], ["a", "a", "b"], ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["a"]["precision"] == 0.5
    assert metrics["per_class"]["b"]["recall"] == 0.5
    assert not {"group_accuracy", "group_confusion", "groups"} & set(metrics)


def test_unknown_labels_are_an_error():
    with pytest.raises(ValueError, match=r"labels \['Barren', 'Water'\] are not among"):
        report(["Forest", "Water"], ["Barren", "Forest"], CLASSES)
    with pytest.raises(ValueError, match="'Water'"):
        confusion(["Forest"], ["Water"], CLASSES)


def test_truth_and_predictions_must_pair_up():
    with pytest.raises(ValueError):
        report(["Forest", "Shrub"], ["Forest"], CLASSES)


def test_confusion_png(tmp_path):
    metrics = report(TRUTH, PREDICTED, CLASSES)
    path = confusion_png(metrics, tmp_path / "confusion.png", title="squeezenet-head")
    assert path == tmp_path / "confusion.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.size == (600, 500)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 0  # something was drawn
    empty = confusion_png(report([], [], CLASSES), tmp_path / "empty.png")
    with Image.open(empty) as img:
        assert img.size == (600, 500)


def test_report_is_plain_json_and_takes_arrays_and_tuples():
    """Bundles store the report as JSON: no numpy scalars or NaN may leak out of it."""
    import json

    metrics = report(np.array(TRUTH), np.array(PREDICTED), tuple(CLASSES))
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert metrics["classes"] == CLASSES
    assert metrics["confusion"] == [[2, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert metrics["per_class"]["Cultivated"]["precision"] is None
    assert type(metrics["per_class"]["Shrub"]["recall"]) is float
    assert type(metrics["per_class"]["Shrub"]["support"]) is int


def test_confusion_follows_the_given_class_order_not_sorted_labels():
    # Reversed order: scikit-learn would sort the labels if it were not told them.
    matrix = confusion(TRUTH, PREDICTED, CLASSES[::-1])
    assert matrix.tolist() == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 2]]


def test_the_seeds_figures_leave_water_tiles_apart():
    truth = ["Forest", "Water", "Water", "Developed", "Cultivated"]
    predicted = ["Forest", "Water", "Forest", "Water", "Cultivated"]
    classes = ("Developed", "Forest", "Cultivated", "Water")
    r = report(truth, predicted, classes)
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["seed_accuracy"] == pytest.approx(2 / 3)  # land tiles; Water on land is wrong
    assert r["seed_group_accuracy"] == pytest.approx(2 / 3)
    assert "seed_accuracy" not in report(["Forest"], ["Forest"], ("Developed", "Forest"))
