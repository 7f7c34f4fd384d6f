"""Spark ML classifiers on featurized rows: classes indexed in bundle order, label checks.

A small hand-made frame shaped like featurize's output (split, label, features) on a
local[2] session; test_featurize.py trains on real tile features end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from landuse.models.spark_classifiers import (
    FOREST_PARAMS,
    LOGREG_PARAMS,
    train_classifiers,
    with_label_index,
)

# Training rows per class, the class's mean on the single feature. "Shrub" comes first by
# frequency and "Forest" alphabetically, so neither ordering can pass for bundle order.
COUNTS = {"Shrub": 6, "Developed": 4, "Forest": 2}
CLASSES = ("Developed", "Forest", "Shrub")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from landuse.spark import local_spark

    session = local_spark("landuse-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def frame(spark: Any) -> Any:
    from pyspark.ml.linalg import Vectors

    rows = [
        ("train", label, Vectors.dense([10.0 * CLASSES.index(label) + i, 1.0]))
        for label, n in COUNTS.items()
        for i in range(n)
    ]
    rows.append(("validation", "Forest", Vectors.dense([10.0, 1.0])))
    return spark.createDataFrame(rows, ["split", "label", "features"])


def test_label_index_follows_the_given_class_order_with_nominal_metadata(frame):
    indexed = with_label_index(frame, CLASSES)
    rows = indexed.select("label", "label_index").distinct().collect()
    assert {r["label"]: r["label_index"] for r in rows} == {
        "Developed": 0.0, "Forest": 1.0, "Shrub": 2.0
    }
    meta = indexed.schema["label_index"].metadata["ml_attr"]
    assert meta == {"type": "nominal", "name": "label_index", "vals": list(CLASSES)}


def test_classifiers_output_classes_in_bundle_order(frame):
    models = train_classifiers(frame, CLASSES, seed=0)
    assert list(models) == ["logreg", "random-forest"]
    for method, model in models.items():
        assert model.numClasses == 3
        rows = model.transform(frame.filter(frame.split == "train")).collect()
        # Output i is CLASSES[i]: the well-separated training rows come back as their label.
        wrong = [r["label"] for r in rows if CLASSES[int(r["prediction"])] != r["label"]]
        assert not wrong, (method, wrong)
    assert models["logreg"].getRegParam() == LOGREG_PARAMS["regParam"]
    assert models["random-forest"].getNumTrees == FOREST_PARAMS["numTrees"]


def test_label_checks(frame):
    with pytest.raises(ValueError, match=r"classes \['Water'\] have no training tiles"):
        train_classifiers(frame, (*CLASSES, "Water"))
    with pytest.raises(ValueError, match=r"training labels \['Shrub'\] not in"):
        train_classifiers(frame, ("Developed", "Forest"))
    only_forest = frame.filter(frame.label == "Forest")
    with pytest.raises(ValueError, match=r"training holds 1 class\(es\) \(\['Forest'\]\)"):
        train_classifiers(only_forest, CLASSES)
    no_forest_training = frame.filter((frame.label != "Forest") | (frame.split == "validation"))
    with pytest.raises(ValueError, match=r"validation holds \['Forest'\]"):
        train_classifiers(no_forest_training, ("Developed", "Shrub"))
    with pytest.raises(ValueError, match=r"unknown classifier methods \['svm'\]"):
        train_classifiers(frame, CLASSES, methods=("logreg", "svm"))
    with pytest.raises(ValueError, match="unknown classifier methods"):
        train_classifiers(frame, CLASSES, methods=())
