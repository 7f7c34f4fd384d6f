"""Any bundle scored on a part of a split exactly as the trainers score their candidates.

So an earlier champion can be compared with new candidates on the validation tiles, and the
chosen champion reported on the test counties that neither training nor the choice saw, and
apart on the test tiles of real land that analysts labelled (:func:`evaluate_on_test_part`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from landuse.models.bundle import Bundle
from landuse.models.data import read_part
from landuse.models.metrics import classes_measured, report
from landuse.models.runners import OnnxRunner
from landuse.tiles import TileCache

EVAL_BATCH = 64  # tiles per ONNX call when scoring validation tiles, as the trainers do


class UnfitModel(ValueError):
    """A bundle cannot be evaluated on a split (other classes or input size)."""


def evaluate_on_validation(bundle: Bundle, split_url: str,
                           input_size: int | None = None) -> dict[str, Any]:
    """Validation metrics of ``bundle`` on a split (see :func:`evaluate_on_split`)."""
    return evaluate_on_split(bundle, split_url, "validation", input_size)


def evaluate_on_split(bundle: Bundle, split_url: str, part: str = "validation",
                      input_size: int | None = None) -> dict[str, Any]:
    """Metrics of ``bundle`` on one part of a split, computed as the trainers compute their
    candidates': the part's tiles read from their scenes (:mod:`landuse.tiles`) at the
    bundle's input size, scored by the ONNX runner in batches, reported by
    :func:`metrics.report`.

    Args:
        bundle: the model to evaluate.
        split_url: the split whose rows are scored.
        part: ``validation`` (comparing models) or ``test`` (reporting the chosen one).
        input_size: the input size the compared candidates were evaluated at; a bundle
            of another size would see the tiles resampled differently.

    Raises:
        UnfitModel: a class the bundle does not know, another input size, or no tiles in
            that part.
    """
    rows, predicted = _predict(bundle, split_url, part, input_size)
    return _figures(rows, predicted, bundle, part)


def evaluate_on_test_part(bundle: Bundle, split_url: str) -> tuple[dict[str, Any],
                                                                   dict[str, Any] | None]:
    """Metrics of ``bundle`` on the split's test part (as :func:`evaluate_on_split`), and
    apart on its reviewed real tiles: test rows labelled by analysts' reviews
    (``label_source`` "review") of counties that are not synthetic, the only figure that
    speaks for real land when the rest of the test part is synthetic.

    Returns:
        The test metrics, and the reviewed real tiles' metrics (with ``measured_on``, the
        classes they hold, and ``others_synthetic``, whether every other test tile is
        synthetic), or None when the test part has no reviewed real tile.

    Raises:
        UnfitModel: see :func:`evaluate_on_split`.
    """
    rows, predicted = _predict(bundle, split_url, "test", None)
    metrics = _figures(rows, predicted, bundle, "test")
    reviewed = reviewed_real(rows)
    if not reviewed.any():
        return metrics, None
    figures = _figures(rows[reviewed], predicted[reviewed.to_numpy()], bundle, "test")
    others = rows[~reviewed]
    figures.update(measured_on=classes_measured(figures),
                   others_synthetic=bool(not others.empty and _synthetic(others).all()))
    return metrics, figures


def reviewed_real(rows: pd.DataFrame) -> pd.Series:
    """Which rows of a split are reviewed tiles of real land (False for splits made before
    reviews)."""
    if "label_source" not in rows:
        return pd.Series(False, index=rows.index)
    return (rows["label_source"] == "review") & ~_synthetic(rows)


def _synthetic(rows: pd.DataFrame) -> pd.Series:
    if "synthetic" not in rows:
        return pd.Series(False, index=rows.index)
    return rows["synthetic"].astype("boolean").fillna(False).astype(bool)


def _figures(rows: pd.DataFrame, predicted: Any, bundle: Bundle, part: str) -> dict[str, Any]:
    return {**report(list(rows["label"]), list(predicted), bundle.spec.classes), "split": part,
            "counties": sorted(rows["county"].unique().tolist())}


def _predict(bundle: Bundle, split_url: str, part: str,
             input_size: int | None) -> tuple[pd.DataFrame, Any]:
    """The part's rows and the bundle's class for each (a numpy array of names)."""
    import tempfile

    import numpy as np

    rows = read_part(split_url, part)
    spec = bundle.spec
    if rows.empty:
        raise UnfitModel(f"split {split_url} has no {part} tiles")
    unknown = sorted(set(rows["label"]) - set(spec.classes))
    if unknown:
        raise UnfitModel(f"{bundle.model_id} has classes {list(spec.classes)}, but the split's "
                         f"{part} part holds {unknown}")
    if input_size is not None and spec.preprocessing.input_size != input_size:
        raise UnfitModel(f"{bundle.model_id} takes {spec.preprocessing.input_size} px input, "
                         f"the candidates {input_size} px")
    runner = OnnxRunner(bundle)
    predicted: list[str] = []
    with tempfile.TemporaryDirectory(prefix="landuse-tiles-") as cache:
        tiles = TileCache(rows, spec.preprocessing, cache).all()
        for i in range(0, len(rows), EVAL_BATCH):
            probs = runner.predict(tiles[i : i + EVAL_BATCH])
            predicted += [spec.classes[j] for j in probs.argmax(axis=1)]
        del tiles  # the memory map, before its folder goes
    return rows, np.array(predicted, dtype=object)
