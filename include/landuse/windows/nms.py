"""Detections from window scores, with non-maximum suppression that merges duplicates.

With a stride smaller than the window, several windows see the same object and all fire
(the seed drew every one of them and left the post-processing undone). Here the windows
whose top class is a detected class with probability at or above a threshold are grouped
greedily, class by class: the best remaining window takes every remaining window of its
class that overlaps it with an IoU above ``iou_threshold``, and the group becomes one box.
With ``merge="weighted"`` the box is the score-weighted mean of the group's windows, which
places an object lying between grid positions better than any single window can; with
``merge="max"`` it is the best window (classic NMS).

All windows are equal squares on one grid, so the IoU of two windows depends only on their
grid offset: it is computed once as a small kernel, and each group is found by looking at
the neighbouring grid cells only (no all-pairs comparison).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from landuse.windows.grid import WindowError, WindowGrid

DEFAULT_THRESHOLD = 0.9
DEFAULT_IOU = 0.1
DETECTION_COLUMNS = ("class", "score", "windows", "row0", "col0", "row1", "col1")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``(row0, col0, row1, col1)``: (len(a), len(b))."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    rows = np.clip(np.minimum(a[:, None, 2], b[None, :, 2])
                   - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    cols = np.clip(np.minimum(a[:, None, 3], b[None, :, 3])
                   - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = rows * cols
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.asarray(np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0))


def iou_kernel(size: int, stride: int) -> np.ndarray:
    """IoU of a window with each window at grid offsets -k..k on both axes, where k is the
    largest offset at which two windows still overlap."""
    k = math.ceil(size / stride) - 1
    offsets = np.arange(-k, k + 1)
    overlap = np.clip(size - np.abs(offsets) * stride, 0, None).astype(np.float64)
    inter = overlap[:, None] * overlap[None, :]
    return np.asarray(inter / (2.0 * size * size - inter))


def check_detection_params(
    threshold: float, iou_threshold: float, merge: str = "weighted"
) -> None:
    """Validate the detection settings.

    Raises:
        WindowError: threshold outside (0, 1], IoU threshold outside [0, 1), unknown merge.
    """
    if not 0 < threshold <= 1:
        raise WindowError(f"detection threshold must be in (0, 1], got {threshold}")
    if not 0 <= iou_threshold < 1:
        raise WindowError(f"NMS IoU threshold must be in [0, 1), got {iou_threshold}")
    if merge not in ("weighted", "max"):
        raise WindowError(f"merge must be 'weighted' or 'max', got {merge!r}")


def detect(
    probabilities: np.ndarray,
    grid: WindowGrid,
    classes: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU,
    detect_classes: Sequence[str] | None = None,
    merge: Literal["weighted", "max"] = "weighted",
) -> pd.DataFrame:
    """Detections after non-maximum suppression, best first.

    Args:
        probabilities: (rows, cols, classes) window probabilities; NaN for unscored windows.
        grid: the window grid they were scored on.
        classes: class names, in probability order.
        threshold: a window fires when its top class has at least this probability.
        iou_threshold: windows of one class overlapping the group's best window with an
            IoU above this are merged into its box (0: any overlap).
        detect_classes: the classes to detect (default: all).
        merge: ``"weighted"`` (score-weighted mean box) or ``"max"`` (the best window's box).

    Returns:
        One row per object: class, score (the best window's), windows (merged), and the
        pixel box row0, col0, row1, col1 (floats; exclusive ends).

    Raises:
        WindowError: bad settings, or a class to detect that the model does not have.
    """
    check_detection_params(threshold, iou_threshold, merge)
    wanted = list(classes) if detect_classes is None else list(detect_classes)
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        raise WindowError(f"cannot detect {unknown}: the model's classes are {list(classes)}")
    probs = np.asarray(probabilities, dtype=np.float32).reshape(grid.rows, grid.cols, -1)
    filled = np.where(np.isnan(probs), -1.0, probs)
    label, score = filled.argmax(axis=2), filled.max(axis=2)
    kernel = iou_kernel(grid.size, grid.stride)
    k = kernel.shape[0] // 2
    s, size = grid.stride, grid.size
    found: list[tuple[str, float, int, float, float, float, float]] = []
    for name in wanted:
        alive = (label == classes.index(name)) & (score >= threshold)
        order = np.flatnonzero(alive)
        order = order[np.argsort(-score.ravel()[order], kind="stable")]
        for flat in order:
            r, c = divmod(int(flat), grid.cols)
            if not alive[r, c]:
                continue
            r0, r1 = max(r - k, 0), min(r + k + 1, grid.rows)
            c0, c1 = max(c - k, 0), min(c + k + 1, grid.cols)
            near = alive[r0:r1, c0:c1]
            group = near & (kernel[r0 - r + k:r1 - r + k, c0 - c + k:c1 - c + k]
                            > iou_threshold)
            group[r - r0, c - c0] = True  # the best window is its own group's seed
            gr, gc = np.nonzero(group)
            near[group] = False  # a view into alive: the group is used up
            if merge == "weighted":
                w = score[r0 + gr, c0 + gc].astype(np.float64)
                top = float(np.dot(w, (r0 + gr) * s) / w.sum())
                left = float(np.dot(w, (c0 + gc) * s) / w.sum())
            else:
                top, left = float(r * s), float(c * s)
            found.append((name, float(score[r, c]), len(gr), top, left, top + size,
                          left + size))
    frame = pd.DataFrame(found, columns=list(DETECTION_COLUMNS))
    frame = frame.astype({"class": "string", "score": "float64", "windows": "int64",
                          "row0": "float64", "col0": "float64", "row1": "float64",
                          "col1": "float64"})
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def match(
    detections: pd.DataFrame, truth: pd.DataFrame, iou_threshold: float = 0.5
) -> tuple[float, float]:
    """Precision and recall of detections against true boxes of the same class.

    Each true box is matched at most once, greedily by detection score, to a detection of
    its class with an IoU of at least ``iou_threshold``. Both frames need ``class`` and
    ``row0, col0, row1, col1``. Returns (precision, recall); 1.0 for an empty denominator.
    """
    cols = ["row0", "col0", "row1", "col1"]
    used = np.zeros(len(truth), dtype=bool)
    hits = 0
    ious = box_iou(detections[cols].to_numpy(), truth[cols].to_numpy())
    same = detections["class"].to_numpy()[:, None] == truth["class"].to_numpy()[None, :]
    for i in np.argsort(-detections["score"].to_numpy(), kind="stable"):
        candidates = np.where(same[i] & ~used & (ious[i] >= iou_threshold), ious[i], -1.0)
        j = int(candidates.argmax()) if len(candidates) else -1
        if j >= 0 and candidates[j] >= 0:
            used[j] = True
            hits += 1
    precision = hits / len(detections) if len(detections) else 1.0
    recall = hits / len(truth) if len(truth) else 1.0
    return precision, recall
