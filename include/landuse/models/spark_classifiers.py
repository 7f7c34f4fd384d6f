"""Spark ML classifiers on featurized tiles: multinomial logistic regression, random forest.

Labels are indexed in the bundle's class order (never by frequency), so output ``i`` of
every model is ``classes[i]``. The settings below are recorded in every bundle's params.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

METHODS = ("logreg", "random-forest")
# Classifier settings, recorded in every bundle's params.
LOGREG_PARAMS: dict[str, Any] = {
    "family": "multinomial",
    "maxIter": 200,
    "regParam": 0.01,  # a few hundred tiles against 512+ features: keep the weights finite
    "elasticNetParam": 0.0,
    "standardization": True,
    "tol": 1e-6,
}
FOREST_PARAMS: dict[str, Any] = {
    "numTrees": 50,
    "maxDepth": 8,
    "featureSubsetStrategy": "sqrt",
    "impurity": "gini",
}
_LABEL_INDEX = "label_index"


def train_classifiers(
    features_df: DataFrame,
    classes: Sequence[str],
    methods: Sequence[str] = METHODS,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit Spark ML classifiers on the training rows of featurized tiles.

    Labels are indexed in the order of ``classes`` (the bundle's order), never by
    frequency, so output ``i`` of every model is ``classes[i]``.

    Args:
        features_df: from :func:`~landuse.models.spark_features.featurize` (columns split,
            label, features).
        classes: class names in bundle order: the land-use classes present in training.
        methods: ``logreg`` (multinomial logistic regression) and/or ``random-forest``.
        seed: random seed of the forest.

    Returns:
        Fitted Spark models by method.

    Raises:
        ValueError: unknown method; training lacks a listed class or holds fewer than two;
            a training or validation label is not among ``classes``.
    """
    from pyspark.ml.classification import LogisticRegression, RandomForestClassifier
    from pyspark.sql import functions as F

    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"unknown classifier methods {unknown or methods}; use {METHODS}")
    classes = tuple(classes)
    counts = features_df.groupBy("split", "label").count().collect()
    train_labels = {r["label"] for r in counts if r["split"] == "train"}
    val_labels = {r["label"] for r in counts if r["split"] == "validation"}
    if len(train_labels) < 2:
        raise ValueError(
            f"training holds {len(train_labels)} class(es) ({sorted(train_labels)}); "
            "a classifier needs two"
        )
    if train_labels - set(classes):
        raise ValueError(f"training labels {sorted(train_labels - set(classes))} not in {classes}")
    if set(classes) - train_labels:
        raise ValueError(f"classes {sorted(set(classes) - train_labels)} have no training tiles")
    if val_labels - set(classes):
        raise ValueError(
            f"validation holds {sorted(val_labels - set(classes))}, which training never saw"
        )

    train = with_label_index(features_df.filter(F.col("split") == "train"), classes)
    models: dict[str, Any] = {}
    for method in methods:
        estimator: Any
        if method == "logreg":
            estimator = LogisticRegression(
                featuresCol="features", labelCol=_LABEL_INDEX, **LOGREG_PARAMS
            )
        else:
            estimator = RandomForestClassifier(
                featuresCol="features", labelCol=_LABEL_INDEX, seed=seed, **FOREST_PARAMS
            )
        log.info("training %s on %d classes", method, len(classes))
        models[method] = estimator.fit(train)
    return models


def with_label_index(frame: DataFrame, classes: Sequence[str]) -> DataFrame:
    """Add ``label_index`` (double): the position of ``label`` in ``classes``.

    The column carries Spark ML nominal metadata, so models know all classes.
    """
    from pyspark.sql import functions as F

    position = F.array_position(F.array(*[F.lit(c) for c in classes]), F.col("label")) - 1
    meta = {"ml_attr": {"type": "nominal", "name": _LABEL_INDEX, "vals": list(classes)}}
    column = position.cast("double").alias(_LABEL_INDEX, metadata=meta)
    return frame.withColumn(_LABEL_INDEX, column)
