"""Classification metrics in the seed's validation-report form, computed by scikit-learn.

Precision of class c = true c predicted c / everything predicted c (a column of the
confusion matrix); recall = true c predicted c / everything truly c (a row). scikit-learn
is imported when a report is made, not with this module: DAG files import it indirectly
and it costs seconds to load.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landuse.labels import CLASS_TO_GROUP, GROUPS, WATER_CLASS


def confusion(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts[i, j] = tiles of true class i predicted as class j.

    Raises:
        ValueError: the sequences differ in length, or a label is not among ``classes``
            (scikit-learn would silently drop it).
    """
    from sklearn.metrics import confusion_matrix

    _check_labels(truth, predicted, classes)
    if len(truth) == 0:  # scikit-learn refuses empty input; no tiles is an all-zero matrix
        return np.zeros((len(classes), len(classes)), dtype=np.int64)
    with warnings.catch_warnings():
        # scikit-learn warns about any 1x1 matrix, even with every label passed as here.
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        matrix = confusion_matrix(truth, predicted, labels=list(classes))
    return matrix.astype(np.int64)


def report(
    truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy on the classes and on their groups, per-class precision and recall, and the
    confusion matrix (rows truth, columns prediction).

    A precision (recall) is ``None`` where no tile was predicted as (truly is) that class;
    accuracy is ``None`` for no tiles. ``measured_classes`` are the classes the tiles truly
    hold: an accuracy speaks for those only (a test county without water says nothing
    about water). Group figures (``group_accuracy``, ``group_confusion``
    over ``groups``, all of :data:`~landuse.labels.GROUPS` in that order) appear
    only when every class belongs to a land-use group and there are tiles.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    matrix = confusion(truth, predicted, classes)
    total = len(truth)
    if total:
        precision, recall, _, support = precision_recall_fscore_support(
            truth, predicted, labels=list(classes), zero_division=np.nan
        )
    else:
        precision = recall = np.full(len(classes), np.nan)
        support = np.zeros(len(classes), dtype=np.int64)
    per_class = {
        c: {
            "precision": _defined(precision[i]),
            "recall": _defined(recall[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }
    out: dict[str, Any] = {
        "tiles": total,
        "accuracy": float(accuracy_score(truth, predicted)) if total else None,
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "classes": list(classes),
        "measured_classes": [c for i, c in enumerate(classes) if support[i]],
    }
    land = [i for i, t in enumerate(truth) if t != WATER_CLASS]
    if total and WATER_CLASS in classes and land:  # the seed's figures: water tiles apart
        out["seed_accuracy"] = float(np.mean([truth[i] == predicted[i] for i in land]))
    if total and all(c in CLASS_TO_GROUP for c in classes):
        tg = [CLASS_TO_GROUP[t] for t in truth]
        pg = [CLASS_TO_GROUP[p] for p in predicted]
        out["group_accuracy"] = float(accuracy_score(tg, pg))
        if "seed_accuracy" in out:
            out["seed_group_accuracy"] = float(np.mean([tg[i] == pg[i] for i in land]))
        out["group_confusion"] = confusion(tg, pg, GROUPS).tolist()
        out["groups"] = list(GROUPS)  # the matrix's rows and columns, in order
    return out


def _check_labels(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> None:
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    known = set(classes)
    unknown = sorted({t for t in [*truth, *predicted] if t not in known})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {list(classes)}")


def _defined(value: float) -> float | None:
    """scikit-learn's NaN for an undefined ratio (zero division) as ``None`` (JSON null)."""
    return None if np.isnan(value) else float(value)


def confusion_png(metrics: dict[str, Any], path: Path, title: str = "") -> Path:
    """Render the confusion matrix (counts, row-normalised colour) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics["confusion"])
    classes = metrics["classes"]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
            )
    acc = metrics.get("accuracy")
    ax.set_title(f"{title} accuracy {acc:.3f}" if acc is not None else title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def classes_measured(metrics: dict[str, Any]) -> str:
    """Which classes an accuracy was measured on, for reports: "6 classes, no Water tile"."""
    known = metrics.get("classes", [])
    present = metrics.get("measured_classes", known)
    absent = [c for c in known if c not in present]
    return f"{len(present)} classes" + (f", no {' or '.join(absent)} tile" if absent else "")
