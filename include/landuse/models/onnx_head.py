"""Fitted Spark ML classifiers as ONNX nodes appended to the backbone graph.

A bundle holds ONE ``model.onnx`` (input ``image``, output ``probabilities``): the
backbone of :mod:`landuse.models.backbone_onnx` followed by the classifier's nodes.

The nodes are written here rather than by ``onnxmltools.convert_sparkml`` (1.16.0, the
latest, tried with pyspark 4.2.0 and onnx 1.23.2) because its output differs from Spark's
``probability`` for both of the project's models:

* multinomial logistic regression becomes ``LinearClassifier(post_transform="LOGISTIC")``
  then an L1 ``Normalizer``: per-class sigmoids rescaled to sum 1, not Spark's softmax
  (max abs diff 0.55 on a 4-class model); a two-class multinomial model fails outright
  (``model.coefficients``: "Multinomial models contain a matrix of coefficients, use
  coefficientMatrix instead.");
* the random forest's double thresholds are rounded to the nearest float32, so a split
  midway between two adjacent float32 feature values can round up onto the upper one and
  send it left where Spark sends it right (probabilities off by 1.0 on such a split; see
  :func:`_float32_at_most` and ``test_forest_threshold_between_adjacent_float32s``). It
  also saves and re-reads every tree through Spark: 85 s against 7 s here for 50 trees
  over 512 features at ``local[1]``, and a standalone cluster needs ``ONNX_DFS_PATH``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from landuse.models.backbone_onnx import FEATURES
from landuse.models.spark_classifiers import METHODS

if TYPE_CHECKING:
    import onnx

OUTPUT = "probabilities"


def classifier_nodes(
    method: str, model: Any, n_classes: int, opset: int
) -> tuple[list[Any], list[Any]]:
    """ONNX nodes and initializers computing ``probabilities`` from ``features``.

    * logistic regression: ``softmax(features @ W.T + b)`` with Spark's coefficient matrix
      and intercepts (multinomial);
    * random forest: an ``ai.onnx.ml`` TreeEnsembleRegressor summing, over trees, each
      reached leaf's normalised class counts, then normalised to sum 1: exactly Spark's
      ``predictRaw`` followed by ``raw2probability``.

    Raises:
        ValueError: unknown method, a model of another class count, or a categorical split.
    """
    from onnx import helper, numpy_helper

    if method == "logreg":
        weights = np.asarray(model.coefficientMatrix.toArray(), dtype=np.float64)
        bias = np.asarray(model.interceptVector.toArray(), dtype=np.float64)
        if weights.shape[0] != n_classes:
            raise ValueError(f"logistic regression has {weights.shape[0]} classes, not {n_classes}")
        inits = [
            numpy_helper.from_array(weights.T.astype(np.float32), "classifier/weights"),
            numpy_helper.from_array(bias.astype(np.float32), "classifier/bias"),
        ]
        nodes = [
            helper.make_node("MatMul", [FEATURES, "classifier/weights"], ["classifier/linear"]),
            helper.make_node(
                "Add", ["classifier/linear", "classifier/bias"], ["classifier/logits"]
            ),
            helper.make_node("Softmax", ["classifier/logits"], [OUTPUT], axis=1),
        ]
        return nodes, inits
    if method == "random-forest":
        if model.numClasses != n_classes:
            raise ValueError(f"random forest has {model.numClasses} classes, not {n_classes}")
        attrs: dict[str, Any] = dict(_forest_attributes(model, n_classes))
        ensemble = helper.make_node(
            "TreeEnsembleRegressor",
            [FEATURES],
            ["classifier/votes"],
            domain="ai.onnx.ml",
            n_targets=n_classes,
            aggregate_function="SUM",
            post_transform="NONE",
            **attrs,
        )
        inits = []
        if opset >= 13:  # ReduceSum took its axes as an input from opset 13 on
            inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "classifier/axes"))
            total = helper.make_node(
                "ReduceSum",
                ["classifier/votes", "classifier/axes"],
                ["classifier/total"],
                keepdims=1,
            )
        else:
            total = helper.make_node(
                "ReduceSum", ["classifier/votes"], ["classifier/total"], axes=[1], keepdims=1
            )
        divide = helper.make_node("Div", ["classifier/votes", "classifier/total"], [OUTPUT])
        return [ensemble, total, divide], inits
    raise ValueError(f"unknown classifier method {method!r}; use {METHODS}")


def _float32_at_most(value: float) -> float:
    """The largest float32 ≤ ``value``: for float32 x, ``x <= value`` iff ``x <= result``.

    Spark compares double features (here exact float32 values) with double thresholds;
    ONNX Runtime compares in float32, where plain rounding could move a threshold up onto
    a feature value and send it the other way.
    """
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, then stepped back
        t = np.float32(value)
    if float(t) > value:
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


def _forest_attributes(model: Any, n_classes: int) -> dict[str, list[Any]]:
    """TreeEnsembleRegressor attributes from Spark's trees (read through py4j)."""
    attrs: dict[str, list[Any]] = {
        k: []
        for k in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_modes",
            "nodes_values",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    for tree_id, tree in enumerate(model.trees):
        # Depth first; children are numbered when their parent is read.
        stack: list[tuple[Any, int]] = [(tree._java_obj.rootNode(), 0)]
        next_id = 1
        while stack:
            node, node_id = stack.pop()
            attrs["nodes_treeids"].append(tree_id)
            attrs["nodes_nodeids"].append(node_id)
            if node.getClass().getSimpleName() == "InternalNode":
                split = node.split()
                if split.getClass().getSimpleName() != "ContinuousSplit":
                    raise ValueError("categorical splits cannot be exported; features are numeric")
                left_id, right_id = next_id, next_id + 1
                next_id += 2
                attrs["nodes_featureids"].append(int(split.featureIndex()))
                attrs["nodes_modes"].append("BRANCH_LEQ")  # Spark: x <= threshold goes left
                attrs["nodes_values"].append(_float32_at_most(float(split.threshold())))
                attrs["nodes_truenodeids"].append(left_id)
                attrs["nodes_falsenodeids"].append(right_id)
                stack.extend(((node.rightChild(), right_id), (node.leftChild(), left_id)))
            else:
                stats = np.asarray(list(node.impurityStats().stats()), dtype=np.float64)
                if len(stats) != n_classes:
                    raise ValueError(f"a leaf holds {len(stats)} class counts, not {n_classes}")
                total = stats.sum()
                share = stats / total if total > 0 else stats  # Spark skips empty leaves too
                attrs["nodes_featureids"].append(0)
                attrs["nodes_modes"].append("LEAF")
                attrs["nodes_values"].append(0.0)
                attrs["nodes_truenodeids"].append(0)
                attrs["nodes_falsenodeids"].append(0)
                for class_id, weight in enumerate(share):
                    if weight:
                        attrs["target_treeids"].append(tree_id)
                        attrs["target_nodeids"].append(node_id)
                        attrs["target_ids"].append(class_id)
                        attrs["target_weights"].append(float(weight))
    return attrs


def append_classifier(
    backbone: onnx.ModelProto, method: str, model: Any, n_classes: int
) -> onnx.ModelProto:
    """One model: the backbone graph with the classifier's nodes after ``features``.

    Returns:
        A checked model with input ``image`` and the single output ``probabilities``
        of shape (N, n_classes).
    """
    import onnx
    from onnx import helper

    combined = onnx.ModelProto()
    combined.CopyFrom(backbone)
    graph = combined.graph
    if [o.name for o in graph.output] != [FEATURES]:
        raise ValueError(f"backbone outputs {[o.name for o in graph.output]}, not [{FEATURES!r}]")
    opsets = {o.domain or "ai.onnx": o for o in combined.opset_import}
    nodes, inits = classifier_nodes(method, model, n_classes, opsets["ai.onnx"].version)
    if method == "random-forest":
        ml = opsets.get("ai.onnx.ml")
        if ml is None:
            combined.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
        elif not 1 <= ml.version <= 4:  # TreeEnsembleRegressor is deprecated from 5 on
            raise ValueError(f"backbone imports ai.onnx.ml opset {ml.version}; need 1-4")
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            OUTPUT, onnx.TensorProto.FLOAT, [batch.dim_param or batch.dim_value or "N", n_classes]
        )
    )
    onnx.checker.check_model(combined)
    return combined
