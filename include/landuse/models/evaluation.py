"""Any bundle scored on a part of a split exactly as the trainers score their candidates.

So an earlier champion can be compared with new candidates on the validation tiles, and the
chosen champion reported on the test counties that neither training nor the choice saw.
"""

from __future__ import annotations

from typing import Any

from landuse.models.bundle import Bundle
from landuse.models.data import read_part
from landuse.models.metrics import report
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
    import tempfile

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
    return {**report(list(rows["label"]), predicted, spec.classes), "split": part,
            "counties": sorted(rows["county"].unique().tolist())}
