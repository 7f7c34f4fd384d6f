"""Featurize and classify: the MMLSpark route of the seed work, on Spark and ONNX.

A frozen ImageNet backbone turns every tile of a split into pooled features on Spark
(``mapInPandas`` over Arrow batches, one ONNX Runtime session per Python worker); Spark ML
then trains a multinomial logistic regression and a random forest on those features. Each
trained classifier is rewritten as ONNX nodes appended to the backbone graph, so a bundle
holds ONE ``model.onnx`` (input ``image``, output ``probabilities``) that scores like any
other bundle. Before a bundle is written, its probabilities on the validation tiles must
equal Spark's ``probability`` column (max abs diff ≤ 1e-4); validation metrics are computed
through :class:`~landuse.models.runners.OnnxRunner`, the path scoring uses.

Tiles are read with :func:`landuse.storage.read_bytes` and preprocessed only through
:mod:`landuse.models.preprocessing`, the code training and scoring share; a tile that does
not decode fails the run with its URL (training never skips bad tiles silently).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from landuse import storage
from landuse.models.backbones import build_backbone
from landuse.models.bundle import Bundle, BundleSpec, Lineage, write_bundle
from landuse.models.data import load_tiles, read_split
from landuse.models.keras_trainer import PARITY_TOLERANCE, TrainResult
from landuse.models.metrics import report
from landuse.models.preprocessing import ImageError, PreprocessSpec, to_tensor
from landuse.models.runners import OnnxRunner

if TYPE_CHECKING:
    import onnx
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

METHODS = ("logreg", "random-forest")
INPUT = "image"
FEATURES = "features"
OUTPUT = "probabilities"
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
_FEATURES_SCHEMA = (
    "tile_id string, label string, split string, image_url string, features array<float>"
)
_PARITY_ROWS = 32  # rows checked when a split has no validation tiles
# ONNX sessions of this Python worker, by model SHA-256: built once, reused by every task.
_SESSIONS: dict[str, Any] = {}
_SESSIONS_KEPT = 4


@dataclass(frozen=True)
class ClassifierResult(TrainResult):
    """A trained featurize-and-classify candidate; ``spark_model`` is the fitted Spark model."""

    spark_model: Any = None


# --- the backbone as ONNX -----------------------------------------------------------------


def export_backbone_onnx(
    backbone_name: str,
    dest_path: str | Path,
    weights: str = "imagenet",
    input_size: int = 224,
) -> tuple[Path, PreprocessSpec]:
    """Export a Keras backbone to ONNX: input ``image``, output ``features`` (pooled).

    Args:
        backbone_name: ``squeezenet`` or ``resnet50`` (see :func:`build_backbone`).
        dest_path: the ONNX file to write (replaced atomically).
        weights: ``imagenet``, a local weights file, or ``random``.
        input_size: square input side in pixels.

    Returns:
        The written path and the preprocessing the network expects.

    Raises:
        ValueError: unknown backbone or unusable weights, or the export disagrees with Keras.
    """
    import onnx

    backbone = build_backbone(backbone_name, weights, input_size)
    spec = backbone.preprocessing
    rng = np.random.default_rng(0)
    probe = to_tensor(rng.integers(0, 256, (2, input_size, input_size, 3), dtype=np.uint8), spec)
    keras_out = np.asarray(backbone.model(probe, training=False))  # Keras exports called models
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        backbone.model.export(str(tmp), format="onnx", verbose=False)
        model = onnx.load(str(tmp))
        _rename_io(model, INPUT, FEATURES)
        dims = [d.dim_value or None for d in model.graph.output[0].type.tensor_type.shape.dim]
        if dims[-1:] != [backbone.features]:
            raise ValueError(
                f"backbone {backbone_name}: ONNX output shape {dims}, expected (N, "
                f"{backbone.features}) pooled features"
            )
        onnx.save(model, str(tmp))
        onnx_out = _onnx_session(model.SerializeToString(), threads=1).run(
            [FEATURES], {INPUT: probe}
        )[0]
        scale = max(1.0, float(np.abs(keras_out).max()))
        diff = float(np.abs(onnx_out - keras_out).max())
        if diff > PARITY_TOLERANCE * scale:  # relative: pooled features are not probabilities
            raise ValueError(
                f"ONNX export of backbone {backbone_name} disagrees with Keras: max abs diff "
                f"{diff:.2e} for features up to {scale:.1f}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest, spec


def _rename_io(model: onnx.ModelProto, input_name: str, output_name: str) -> None:
    """Name the graph's first input and output (the exporter's names are generated)."""
    graph = model.graph
    renames = {graph.input[0].name: input_name, graph.output[0].name: output_name}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for info in graph.value_info:
        info.name = renames.get(info.name, info.name)
    graph.input[0].name = input_name
    graph.output[0].name = output_name


def _onnx_session(model: bytes | str, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# --- features on Spark --------------------------------------------------------------------


def featurize(
    spark: SparkSession,
    split_url: str,
    backbone_onnx_path: str | Path,
    spec: PreprocessSpec,
    batch_size: int = 32,
) -> DataFrame:
    """Pooled backbone features of every tile of a split, computed on Spark.

    Each Python worker builds one ONNX Runtime session (one intra-op thread; Spark runs one
    task per core) and keeps it for later tasks. The result is persisted and computed
    before it is returned, so a bad tile fails here; ``unpersist()`` it when done.

    Args:
        spark: the session (see :func:`landuse.spark.local_spark`).
        split_url: a ``split.parquet`` written by :func:`landuse.splits.build_dataset`.
        backbone_onnx_path: the backbone from :func:`export_backbone_onnx`; a path or URL
            every worker can read.
        spec: the backbone's preprocessing.
        batch_size: tiles per ONNX call.

    Returns:
        Columns tile_id, label, split, image_url, features (Spark ML DenseVector).

    Raises:
        ImageError: a tile is missing or not a readable image; the message names its URL.
        ValueError: the model's input does not match ``spec``.
    """
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model_url = str(backbone_onnx_path)
    data = storage.read_bytes(model_url)
    _check_backbone(data, model_url, spec)
    rows = storage.read_parquet(split_url).to_pandas()
    missing = {"tile_id", "label", "split", "image_url"} - set(rows.columns)
    if missing:
        raise ValueError(f"split {split_url} lacks columns {sorted(missing)}")
    rows = rows[["tile_id", "label", "split", "image_url"]].astype(str)
    # Enough partitions to keep every core busy, each a few batches long.
    parts = max(spark.sparkContext.defaultParallelism, -(-len(rows) // (batch_size * 8)))
    work = functools.partial(
        _featurize_partition,
        model_url=model_url,
        sha256=hashlib.sha256(data).hexdigest(),
        spec_json=spec.model_dump_json(),
        batch_size=batch_size,
    )
    frame = (
        spark.createDataFrame(rows)
        .repartition(parts)
        .mapInPandas(work, schema=_FEATURES_SCHEMA)
        .withColumn("features", array_to_vector(F.col("features")))
        .persist()
    )
    try:
        count = frame.count()
    except Exception as err:
        frame.unpersist()
        tile_error = _image_error(err, split_url)
        if tile_error is None:
            raise
        raise tile_error from err
    log.info("featurized %d tiles of %s in %d partitions", count, split_url, parts)
    return frame


def _check_backbone(data: bytes, url: str, spec: PreprocessSpec) -> None:
    import onnx

    model = onnx.load_from_string(data)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    if INPUT not in inputs or FEATURES not in outputs:
        raise ValueError(
            f"backbone {url}: needs input {INPUT!r} and output {FEATURES!r}, has "
            f"{sorted(inputs)} and {sorted(outputs)} (see export_backbone_onnx)"
        )
    dims = [d.dim_value or None for d in inputs[INPUT].type.tensor_type.shape.dim]
    want = spec.input_shape
    if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], want, strict=True)):
        raise ValueError(f"backbone {url}: input shape {dims[1:]} does not match {want}")


def _image_error(err: Exception, split_url: str) -> ImageError | None:
    """A tile error from a Python worker, as an ImageError with the worker's own message.

    Spark reports worker failures as a PythonException holding the whole traceback text.
    """
    found = re.findall(r"ImageError: (.+)", str(err))
    if found:
        return ImageError(f"featurizing {split_url}: {found[-1].strip()}")
    return None


def _featurize_partition(
    batches: Iterator[pd.DataFrame],
    *,
    model_url: str,
    sha256: str,
    spec_json: str,
    batch_size: int,
) -> Iterator[pd.DataFrame]:
    """Runs on a Spark Python worker: tiles of one partition to pooled features."""
    spec = PreprocessSpec.model_validate_json(spec_json)
    session = _worker_session(model_url, sha256)
    for frame in batches:
        for start in range(0, len(frame), batch_size):
            chunk = frame.iloc[start : start + batch_size]
            tiles = load_tiles(list(chunk["image_url"]), spec)  # ImageError names the URL
            x = to_tensor(tiles, spec)
            features = np.asarray(session.run([FEATURES], {INPUT: x})[0], dtype=np.float32)
            out = chunk[["tile_id", "label", "split", "image_url"]].reset_index(drop=True)
            out["features"] = list(features)
            yield out


def _worker_session(model_url: str, sha256: str) -> Any:
    """This worker's ONNX session for a model, built on first use."""
    session = _SESSIONS.get(sha256)
    if session is None:
        data = storage.read_bytes(model_url)
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise ValueError(f"backbone {model_url} changed while featurizing ({found[:12]})")
        if len(_SESSIONS) >= _SESSIONS_KEPT:  # long-lived workers: drop old models
            _SESSIONS.clear()
        session = _SESSIONS[sha256] = _onnx_session(data, threads=1)
    return session


# --- classifiers on Spark -----------------------------------------------------------------


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
        features_df: from :func:`featurize` (columns split, label, features).
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


# --- classifiers as ONNX ------------------------------------------------------------------


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


# --- the whole route ----------------------------------------------------------------------


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
        ImageError: a tile is missing or corrupt (its URL is named).
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
            for method, model in models.items():
                results.append(
                    _write_method_bundle(
                        root / f"{backbone}-{method}",
                        method,
                        model,
                        backbone_model,
                        check,
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
        return features.filter(F.col("split") == "validation").orderBy("image_url")
    return features.filter(F.col("split") == "train").orderBy("image_url").limit(_PARITY_ROWS)


def _write_method_bundle(
    dest: Path,
    method: str,
    model: Any,
    backbone_model: onnx.ModelProto,
    check: DataFrame,
    classes: tuple[str, ...],
    spec: PreprocessSpec,
    backbone: str,
    lineage: Lineage,
    params: dict[str, Any],
    is_validation: bool,
) -> ClassifierResult:
    import onnx

    rows = model.transform(check).select("image_url", "label", "probability").collect()
    urls = [r["image_url"] for r in rows]
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
            np.concatenate(
                [
                    runner.predict(load_tiles(urls[i : i + 64], spec))
                    for i in range(0, len(urls), 64)
                ]
            )
            if urls
            else np.zeros((0, len(classes)), dtype=np.float32)
        )
        diff = float(np.abs(probs - spark_probs).max()) if len(urls) else 0.0
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
