"""Classification metrics in the seed's validation-report form, with the correct formulas.

Precision of class c = true c predicted c / everything predicted c (a column of the
confusion matrix); recall = true c predicted c / everything truly c (a row).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landuse.labels import CLASS_TO_GROUP, GROUPS


def confusion(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts[i, j] = tiles of true class i predicted as class j."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(
        {t for t in truth if t not in index} | {p for p in predicted if p not in index}
    )
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's classes {list(classes)}")
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, ([index[t] for t in truth], [index[p] for p in predicted]), 1)
    return matrix


def report(
    truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy on the classes and on the three groups, per-class precision and recall, and the
    confusion matrix (rows truth, columns prediction)."""
    matrix = confusion(truth, predicted, classes)
    total = int(matrix.sum())
    diag = np.diag(matrix)
    predicted_totals, true_totals = matrix.sum(axis=0), matrix.sum(axis=1)
    per_class = {
        c: {
            "precision": float(diag[i] / predicted_totals[i]) if predicted_totals[i] else None,
            "recall": float(diag[i] / true_totals[i]) if true_totals[i] else None,
            "support": int(true_totals[i]),
        }
        for i, c in enumerate(classes)
    }
    groups_known = all(c in CLASS_TO_GROUP for c in classes)
    out: dict[str, Any] = {
        "tiles": total,
        "accuracy": float(diag.sum() / total) if total else None,
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "classes": list(classes),
    }
    if groups_known and total:
        tg = [CLASS_TO_GROUP[t] for t in truth]
        pg = [CLASS_TO_GROUP[p] for p in predicted]
        out["group_accuracy"] = float(np.mean([a == b for a, b in zip(tg, pg, strict=True)]))
        out["group_confusion"] = confusion(tg, pg, GROUPS).tolist()
    return out


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
