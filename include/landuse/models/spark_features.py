"""Pooled backbone features of a split's tiles, computed on Spark.

``mapInPandas`` over Arrow batches, one ONNX Runtime session per Python worker (cached by
the model's SHA-256, so later tasks reuse it). Tiles are read from their scenes by
:func:`landuse.tiles.read_tiles` (partitions hold whole scenes, each opened once per batch),
the read scoring uses, and preprocessed only through :mod:`landuse.models.preprocessing`; a
tile that cannot be read fails the run naming it (training never skips bad tiles silently).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from landuse import storage
from landuse.models.backbone_onnx import FEATURES, INPUT, onnx_session
from landuse.models.preprocessing import ImageError, PreprocessSpec, to_tensor
from landuse.tiles import SCENE_COLUMNS, read_tiles

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

_FEATURES_SCHEMA = "row long, tile_id string, label string, split string, features array<float>"
_KEYS = ["row", "tile_id", "label", "split"]
_INPUT_SCHEMA = ("row long, tile_id string, label string, split string, image_url string, "
                 "scene_url string, minx double, miny double, maxx double, maxy double, "
                 "order long")
_INPUT_COLUMNS = [c.split()[0] for c in _INPUT_SCHEMA.split(", ")]
# ONNX sessions of this Python worker, by model SHA-256: built once, reused by every task.
_SESSIONS: dict[str, Any] = {}
_SESSIONS_KEPT = 4


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
        backbone_onnx_path: the backbone from
            :func:`~landuse.models.backbone_onnx.export_backbone_onnx`; a path or URL
            every worker can read.
        spec: the backbone's preprocessing.
        batch_size: tiles per ONNX call.

    Returns:
        Columns row (the tile's row in the split), tile_id, label, split, features (Spark
        ML DenseVector).

    Raises:
        ImageError: a tile or its scene cannot be read; the message names it.
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
    missing = {"tile_id", "label", "split"} - set(rows.columns)
    if missing:
        raise ValueError(f"split {split_url} lacks columns {sorted(missing)}")
    for column in ("image_url", *SCENE_COLUMNS):  # a split of chips has no scenes, and back
        if column not in rows:
            rows[column] = None
    rows = rows[_INPUT_COLUMNS[1:-1]].rename_axis("row").reset_index()
    # Enough partitions to keep every core busy, each a few batches long; a scene's tiles
    # in a row, so a task opens each of its scenes once per batch.
    parts = max(spark.sparkContext.defaultParallelism, -(-len(rows) // (batch_size * 8)))
    rows = rows.sort_values(["scene_url", "maxy", "minx", "row"],
                            ascending=[True, False, True, True], na_position="last")
    rows["order"] = np.arange(len(rows))
    work = functools.partial(
        _featurize_partition,
        model_url=model_url,
        sha256=hashlib.sha256(data).hexdigest(),
        spec_json=spec.model_dump_json(),
        batch_size=batch_size,
    )
    frame = (
        spark.createDataFrame(rows, schema=_INPUT_SCHEMA)
        .repartitionByRange(parts, "order")
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
            f"{sorted(inputs)} and {sorted(outputs)} (see "
            "landuse.models.backbone_onnx.export_backbone_onnx)"
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
            x = to_tensor(read_tiles(chunk, spec), spec)  # ImageError names the tile
            features = np.asarray(session.run([FEATURES], {INPUT: x})[0], dtype=np.float32)
            out = chunk[_KEYS].reset_index(drop=True)
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
        session = _SESSIONS[sha256] = onnx_session(data, threads=1)
    return session
