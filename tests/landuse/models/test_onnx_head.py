"""Spark ML classifiers as ONNX nodes: the appended graph reproduces Spark's ``probability``.

Real Spark models (local[2]) fitted on small numeric feature frames, so the file is quick;
the backbone is a one-node graph (``image`` -> Identity -> ``features``), since only the
classifier's part is under test here (test_featurize.py checks whole bundles on tiles).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from landuse.models.onnx_head import _float32_at_most, append_classifier, classifier_nodes
from landuse.models.spark_classifiers import train_classifiers

DIMS = 5


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from landuse.spark import local_spark

    session = local_spark("landuse-tests")
    yield session
    session.stop()


def _frame(spark: Any, x: np.ndarray, labels: list[str]) -> Any:
    """A frame shaped like featurize's output: split, label, features (DenseVector)."""
    from pyspark.ml.linalg import Vectors

    rows = [
        ("train", label, Vectors.dense([float(v) for v in row]))
        for row, label in zip(x, labels, strict=True)
    ]
    return spark.createDataFrame(rows, ["split", "label", "features"])


def _backbone(opset: int, ml_opset: int | None = None) -> onnx.ModelProto:
    """A stand-in backbone whose ``features`` are its ``image`` input."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["features"])],
        "backbone",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", DIMS])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", DIMS])],
    )
    opsets = [helper.make_opsetid("", opset)]
    if ml_opset is not None:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ml_opset))
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"image": x.astype(np.float32)})[0])


def _spark_probabilities(model: Any, frame: Any) -> np.ndarray:
    rows = model.transform(frame).select("probability").collect()
    return np.stack([r["probability"].toArray() for r in rows])


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, list[str]]:
    """Four classes around separate centres, overlapping enough for mixed leaves."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 2, (4, DIMS))
    which = np.repeat(np.arange(4), 30)
    x = (centres[which] + rng.normal(0, 1.5, (len(which), DIMS))).astype(np.float32)
    return x, [f"c{i}" for i in which]


@pytest.fixture(scope="module", params=[4, 2], ids=["4-classes", "2-classes"])
def fitted(request, spark, blobs) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """Both methods fitted on the first n classes (two: ONNX tree ops special-case binary)."""
    x, labels = blobs
    keep = [i for i, label in enumerate(labels) if int(label[1:]) < request.param]
    frame = _frame(spark, x[keep], [labels[i] for i in keep])
    classes = tuple(f"c{i}" for i in range(request.param))
    return x[keep], frame, train_classifiers(frame, classes, seed=3)


@pytest.mark.parametrize("opset", [12, 15])  # ReduceSum's axes: attribute, then input
def test_appended_classifier_equals_spark_probabilities(fitted, opset):
    x, frame, models = fitted
    for method, model in models.items():
        n_classes = int(model.numClasses)
        combined = append_classifier(_backbone(opset), method, model, n_classes)
        assert [o.name for o in combined.graph.output] == ["probabilities"]
        assert combined.graph.output[0].type.tensor_type.shape.dim[1].dim_value == n_classes
        got = _run(combined, x)
        want = _spark_probabilities(model, frame)
        assert got.shape == want.shape == (len(x), n_classes)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=method)


def test_forest_threshold_between_adjacent_float32s(spark):
    """Spark splits midway between two adjacent float32 values (a double that float32
    rounding would move onto the upper one); ONNX must still send that value right."""
    a = np.nextafter(np.float32(1.0), np.float32(2.0))
    b = np.nextafter(a, np.float32(2.0))
    assert np.float32((float(a) + float(b)) / 2) == b  # the tie rounds up: the trap is set
    x = np.zeros((40, DIMS), dtype=np.float32)
    x[:20, 0], x[20:, 0] = a, b
    frame = _frame(spark, x, ["low"] * 20 + ["high"] * 20)
    model = train_classifiers(frame, ("low", "high"), methods=("random-forest",))["random-forest"]
    want = _spark_probabilities(model, frame)
    assert (want.argmax(axis=1) == np.repeat([0, 1], 20)).all()  # Spark separates them
    got = _run(append_classifier(_backbone(15), "random-forest", model, 2), x)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("value", [0.1, 1.0, 1e-30, 3.4e38, 1e39, -0.7, 5e-324])
def test_float32_thresholds_keep_sparks_comparisons(value):
    t = _float32_at_most(value)
    assert t <= value
    with np.errstate(over="ignore"):
        above = np.nextafter(np.float32(t), np.float32(np.inf))
    assert float(above) > value  # no float32 lies between t and value


def test_bad_inputs_are_refused(fitted):
    _, _, models = fitted
    n = int(models["logreg"].numClasses)
    with pytest.raises(ValueError, match="unknown classifier method 'svm'"):
        classifier_nodes("svm", models["logreg"], n, opset=15)
    with pytest.raises(ValueError, match=f"logistic regression has {n} classes, not 3"):
        classifier_nodes("logreg", models["logreg"], 3, opset=15)
    with pytest.raises(ValueError, match=f"random forest has {n} classes, not 5"):
        classifier_nodes("random-forest", models["random-forest"], 5, opset=15)
    with pytest.raises(ValueError, match=r"ai\.onnx\.ml opset 5"):
        append_classifier(_backbone(15, ml_opset=5), "random-forest", models["random-forest"], n)
    no_features = _backbone(15)
    no_features.graph.output[0].name = "logits"
    with pytest.raises(ValueError, match=r"backbone outputs \['logits'\]"):
        append_classifier(no_features, "logreg", models["logreg"], n)
