"""Non-maximum suppression that merges overlapping same-class windows into one box."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from landuse.windows.grid import WindowError, WindowGrid
from landuse.windows.nms import box_iou, detect, iou_kernel, match

CLASSES = ("background", "car", "boat")


def _probs(grid: WindowGrid, fired: dict[tuple[int, int], tuple[str, float]]) -> np.ndarray:
    """Window probabilities: background everywhere except the given (row, col) windows."""
    probs = np.zeros((grid.rows, grid.cols, 3), dtype=np.float32)
    probs[..., 0] = 0.99
    probs[..., 1:] = 0.005
    for (r, c), (name, p) in fired.items():
        probs[r, c] = (1 - p) / 2
        probs[r, c, CLASSES.index(name)] = p
    return probs


def test_box_iou():
    a = np.array([[0, 0, 32, 32]])
    b = np.array([[0, 0, 32, 32], [0, 16, 32, 48], [16, 16, 48, 48], [40, 40, 72, 72]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 1 / 7, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_iou_kernel_of_the_seed_layout():
    kernel = iou_kernel(32, 16)
    np.testing.assert_allclose(kernel, [[1 / 7, 1 / 3, 1 / 7], [1 / 3, 1, 1 / 3],
                                        [1 / 7, 1 / 3, 1 / 7]])
    assert iou_kernel(32, 32).shape == (1, 1)  # no overlap without overlap
    assert iou_kernel(32, 8).shape == (7, 7)


def test_overlapping_windows_of_one_object_become_one_weighted_box():
    """An object between grid positions fires the 2 × 2 windows around it; NMS merges
    them into one box placed by their scores, closer to the object than any window."""
    grid = WindowGrid(160, 160, 32, 16)
    fired = {(2, 2): ("car", 0.99), (2, 3): ("car", 0.97), (3, 2): ("car", 0.97),
             (3, 3): ("car", 0.95)}
    found = detect(_probs(grid, fired), grid, CLASSES, detect_classes=["car", "boat"])
    assert len(found) == 1
    row = found.iloc[0]
    assert row["class"] == "car" and row["windows"] == 4
    assert row["score"] == pytest.approx(0.99)
    w = np.array([0.99, 0.97, 0.97, 0.95])
    expected_top = float(np.dot(w, [32, 32, 48, 48]) / w.sum())
    assert row["row0"] == pytest.approx(expected_top)
    assert row["col0"] == pytest.approx(expected_top)
    assert row["row1"] - row["row0"] == 32
    # Classic NMS keeps the best window alone.
    best = detect(_probs(grid, fired), grid, CLASSES, detect_classes=["car"], merge="max")
    assert best[["row0", "col0", "row1", "col1"]].iloc[0].tolist() == [32, 32, 64, 64]


def test_classes_are_not_merged_and_separate_objects_stay_separate():
    grid = WindowGrid(224, 224, 32, 16)
    fired = {(1, 1): ("car", 0.99), (1, 2): ("boat", 0.98),  # adjacent, other class
             (8, 8): ("car", 0.97), (8, 9): ("car", 0.96),  # a second car
             (5, 1): ("car", 0.5)}  # below the threshold
    found = detect(_probs(grid, fired), grid, CLASSES, detect_classes=["car", "boat"])
    assert sorted(zip(found["class"], found["windows"], strict=True)) == [
        ("boat", 1), ("car", 1), ("car", 2)]
    assert list(found["score"]) == sorted(found["score"], reverse=True)


def test_iou_threshold_decides_what_counts_as_the_same_object():
    grid = WindowGrid(160, 160, 32, 16)
    fired = {(2, 2): ("car", 0.99), (3, 3): ("car", 0.95)}  # diagonal: IoU 1/7
    merged = detect(_probs(grid, fired), grid, CLASSES, detect_classes=["car"],
                    iou_threshold=0.1)
    kept = detect(_probs(grid, fired), grid, CLASSES, detect_classes=["car"],
                  iou_threshold=0.2)
    assert (len(merged), len(kept)) == (1, 2)


def test_unscored_windows_never_fire_and_all_classes_by_default():
    grid = WindowGrid(64, 64, 32, 16)
    probs = _probs(grid, {})
    probs[0, 0] = np.nan
    found = detect(probs, grid, CLASSES)
    assert set(found["class"]) == {"background"}
    assert found["windows"].sum() == grid.count - 1


def test_no_detections_is_an_empty_frame_with_the_columns():
    grid = WindowGrid(64, 64, 32, 16)
    found = detect(_probs(grid, {}), grid, CLASSES, detect_classes=["car"])
    assert found.empty
    assert list(found.columns) == ["class", "score", "windows", "row0", "col0", "row1", "col1"]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"threshold": 0}, "threshold must be in"), ({"threshold": 1.5}, "threshold must be in"),
     ({"iou_threshold": 1.0}, "IoU threshold"), ({"merge": "mean"}, "merge must be"),
     ({"detect_classes": ["plane"]}, r"cannot detect \['plane'\]")],
)
def test_bad_settings_are_clear_errors(options, message):
    grid = WindowGrid(64, 64, 32, 16)
    with pytest.raises(WindowError, match=message):
        detect(_probs(grid, {}), grid, CLASSES, **options)


def test_match_counts_each_true_object_once():
    truth = pd.DataFrame({"class": ["car", "boat"], "row0": [0, 100], "col0": [0, 100],
                          "row1": [32, 132], "col1": [32, 132]})
    found = pd.DataFrame({"class": ["car", "car", "car"], "score": [0.99, 0.98, 0.97],
                          "row0": [2, 0, 100], "col0": [2, 0, 100], "row1": [34, 32, 132],
                          "col1": [34, 32, 132]})
    precision, recall = match(found, truth)
    assert (precision, recall) == (1 / 3, 1 / 2)  # a duplicate and a wrong class
    assert match(found.iloc[:0], truth) == (1.0, 0.0)
