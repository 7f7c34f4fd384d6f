"""Featurize and classify: the MMLSpark route of the seed work, on Spark and ONNX.

A frozen ImageNet backbone turns every tile of a split into pooled features on Spark
(``mapInPandas`` over Arrow batches, one ONNX Runtime session per Python worker); Spark ML
then trains a multinomial logistic regression and a random forest on those features. Each
trained classifier is rewritten as ONNX nodes appended to the backbone graph, so a bundle
holds ONE ``model.onnx`` (input ``image``, output ``probabilities``) that scores like any
other bundle. Before a bundle is written, its probabilities on the validation tiles must
equal Spark's ``probability`` column (max abs diff ≤ 1e-4); validation metrics are computed
through :class:`~landuse.models.runners.OnnxRunner`, the path scoring uses.

The route's parts, one module each:

* :mod:`landuse.models.backbone_onnx`: the Keras backbone exported to ONNX;
* :mod:`landuse.models.spark_features`: features of every tile on Spark;
* :mod:`landuse.models.spark_classifiers`: the Spark ML classifiers;
* :mod:`landuse.models.onnx_head`: a fitted classifier as ONNX nodes after the backbone.

This module runs them in order and writes the bundles; it also re-exports the parts'
public names, so ``landuse.models.featurize`` stays the route's one entry point.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from landuse import storage
from landuse.models.backbone_onnx import FEATURES, INPUT, export_backbone_onnx
from landuse.models.bundle import Bundle, BundleSpec, Lineage, write_bundle
from landuse.models.data import read_split
from landuse.models.keras_trainer import PARITY_TOLERANCE, TrainResult
from landuse.models.metrics import report
from landuse.models.onnx_head import OUTPUT, append_classifier, classifier_nodes
from landuse.models.preprocessing import PreprocessSpec
from landuse.models.runners import OnnxRunner
from landuse.models.spark_classifiers import (
    FOREST_PARAMS,
    LOGREG_PARAMS,
    METHODS,
    train_classifiers,
    with_label_index,
)
from landuse.models.spark_features import featurize
from landuse.tiles import read_tiles

if TYPE_CHECKING:
    import onnx
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "FEATURES",
    "FOREST_PARAMS",
    "INPUT",
    "LOGREG_PARAMS",
    "METHODS",
    "OUTPUT",
    "ClassifierResult",
    "append_classifier",
    "classifier_nodes",
    "export_backbone_onnx",
    "featurize",
    "featurize_and_classify",
    "train_classifiers",
    "with_label_index",
]

log = logging.getLogger(__name__)

_PARITY_ROWS = 32  # rows checked when a split has no validation tiles


@dataclass(frozen=True)
class ClassifierResult(TrainResult):
    """A trained featurize-and-classify candidate; ``spark_model`` is the fitted Spark model."""

    spark_model: Any = None


def featurize_and_classify(
    spark: SparkSession,
    split_url: str,
    dest_root: str | Path,
    backbone: str = "squeezenet",
    methods: Sequence[str] = METHODS,
    weights: str = "imagenet",
    lineage: Lineage | None = None,
    *,
    input_size: int = 224,
    batch_size: int = 32,
    seed: int = 0,
) -> list[ClassifierResult]:
    """Featurize a split on Spark, train each classifier, write one bundle per method.

    Bundles go to ``dest_root/<backbone>-<method>`` (atomically). Each holds one ONNX
    model (backbone + classifier); its probabilities must equal Spark's on the validation
    tiles (on a few training tiles when there are none) and its validation metrics are
    computed with the ONNX runner.

    Raises:
        ValueError: the split is unusable (see :func:`read_split`), an unknown method or
            backbone, or a bundle disagrees with Spark.
        ImageError: a tile or its scene cannot be read (named).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"unknown classifier methods {unknown or list(methods)}; use {METHODS}")
    import onnx

    train, val, classes = read_split(split_url)
    log.info(
        "featurize and classify: %d training, %d validation tiles, classes %s",
        len(train),
        len(val),
        classes,
    )
    if lineage is None:
        split_sha = hashlib.sha256(storage.read_bytes(split_url)).hexdigest()
        lineage = Lineage(dataset_uri=split_url, split_sha256=split_sha)
    root = Path(dest_root)
    root.mkdir(parents=True, exist_ok=True)
    results: list[ClassifierResult] = []
    with tempfile.TemporaryDirectory(prefix=".featurize-", dir=root) as work:
        onnx_path, spec = export_backbone_onnx(
            backbone, Path(work) / "backbone.onnx", weights, input_size
        )
        backbone_model = onnx.load(str(onnx_path))
        features = featurize(spark, split_url, onnx_path, spec, batch_size)
        try:
            models = train_classifiers(features, classes, methods, seed)
            check = _check_rows(features, has_validation=len(val) > 0)
            split = storage.read_parquet(split_url).to_pandas()
            for method, model in models.items():
                results.append(
                    _write_method_bundle(
                        root / f"{backbone}-{method}",
                        method,
                        model,
                        backbone_model,
                        check,
                        split,
                        classes,
                        spec,
                        backbone,
                        lineage,
                        params={
                            "weights": weights,
                            "input_size": input_size,
                            "seed": seed,
                            "batch_size": batch_size,
                        },
                        is_validation=len(val) > 0,
                    )
                )
        finally:
            features.unpersist()
    return results


def _check_rows(features: DataFrame, has_validation: bool) -> DataFrame:
    """Rows on which bundle and Spark must agree, in a fixed order."""
    from pyspark.sql import functions as F

    if has_validation:
        return features.filter(F.col("split") == "validation").orderBy("row")
    return features.filter(F.col("split") == "train").orderBy("row").limit(_PARITY_ROWS)


def _write_method_bundle(
    dest: Path,
    method: str,
    model: Any,
    backbone_model: onnx.ModelProto,
    check: DataFrame,
    split: Any,
    classes: tuple[str, ...],
    spec: PreprocessSpec,
    backbone: str,
    lineage: Lineage,
    params: dict[str, Any],
    is_validation: bool,
) -> ClassifierResult:
    import onnx

    rows = model.transform(check).select("row", "label", "probability").collect()
    checked = split.iloc[[r["row"] for r in rows]]
    truth = [r["label"] for r in rows]
    spark_probs = np.array([r["probability"].toArray() for r in rows], dtype=np.float64)
    combined = append_classifier(backbone_model, method, model, len(classes))
    classifier = LOGREG_PARAMS if method == "logreg" else FOREST_PARAMS
    bundle_spec = BundleSpec(
        schema_version=1,
        name=dest.name,
        classes=classes,
        preprocessing=spec,
        backbone=backbone,
        method=method,
        formats=("onnx",),
        onnx_input=INPUT,
        onnx_output=OUTPUT,
        lineage=lineage,
        params={**params, "classifier": classifier, "route": "featurize-and-classify"},
    )

    def write_and_check(folder: Path) -> None:
        onnx.save(combined, str(folder / "model.onnx"))
        runner = OnnxRunner(Bundle(folder, bundle_spec), threads=min(4, os.cpu_count() or 1))
        probs = (
            np.concatenate([runner.predict(read_tiles(checked.iloc[i : i + 64], spec))
                            for i in range(0, len(checked), 64)])
            if len(checked)
            else np.zeros((0, len(classes)), dtype=np.float32)
        )
        diff = float(np.abs(probs - spark_probs).max()) if len(checked) else 0.0
        if diff > PARITY_TOLERANCE:
            raise ValueError(
                f"ONNX bundle {dest.name} disagrees with Spark's probabilities: max abs diff "
                f"{diff:.2e} > {PARITY_TOLERANCE}"
            )
        metrics: dict[str, Any] = {"onnx_spark_max_abs_diff": diff}
        if is_validation:
            metrics.update(report(truth, [classes[i] for i in probs.argmax(axis=1)], classes))
        bundle_spec.metrics = metrics

    bundle = write_bundle(dest, bundle_spec, write_and_check)
    history: dict[str, list[float]] = {}
    if method == "logreg" and model.hasSummary:
        history["loss"] = [float(v) for v in model.summary.objectiveHistory]
    log.info("wrote %s: %s", dest, {k: bundle.spec.metrics.get(k) for k in ("accuracy", "tiles")})
    return ClassifierResult(bundle, bundle.spec.metrics, history, model)
