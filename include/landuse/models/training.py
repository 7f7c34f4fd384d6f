"""The retraining stage: candidates from backbones × methods, each tracked, then a champion.

Methods: ``head`` (frozen base, new head) and ``fine-tune`` (then the last blocks) train
in Keras; ``logreg`` and ``random-forest`` featurize on Spark and fit Spark ML classifiers
(the MMLSpark route), one Spark job per backbone for both.

Candidates are trained into a local temporary folder and then published under the models
root (``{storage_root}/models``, a folder or ``abfs://``), so any machine can load them by
URL, and tracked (:mod:`landuse.models.tracking`), which compares them with the champion
through :mod:`landuse.models.evaluation`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from landuse import storage
from landuse.models.bundle import Bundle, Lineage, publish_bundle
from landuse.models.tracking import log_candidate

CALIBRATION_TILES = 32  # training tiles that set the int8 model's activation ranges
MAX_INT8_CHECK = 2000  # validation tiles the int8 model is checked on, at most

KERAS_METHODS = ("head", "fine-tune")
SPARK_METHODS = ("logreg", "random-forest")
BACKBONES = ("squeezenet", "resnet50")


def visible_gpus() -> list[Any]:
    """The GPUs TensorFlow sees (``tf.config.list_physical_devices('GPU')``): empty means
    training runs on the CPU. Logged by every training task."""
    import tensorflow as tf

    return list(tf.config.list_physical_devices("GPU"))


def plan_candidates(backbones: list[str], methods: list[str]) -> list[dict[str, Any]]:
    """One candidate per (backbone, Keras method); one per backbone for all Spark methods.

    Raises:
        ValueError: unknown backbone or method, or nothing to train.
    """
    unknown = sorted(set(backbones) - set(BACKBONES)) + sorted(
        set(methods) - set(KERAS_METHODS + SPARK_METHODS))
    if unknown:
        raise ValueError(f"unknown backbone(s)/method(s) {unknown}; backbones {BACKBONES}, "
                         f"methods {KERAS_METHODS + SPARK_METHODS}")
    if not backbones or not methods:
        raise ValueError("choose at least one backbone and one method")
    candidates: list[dict[str, Any]] = []
    for backbone in backbones:
        for method in methods:
            if method in KERAS_METHODS:
                candidates.append({"backbone": backbone, "methods": [method]})
        spark = [m for m in methods if m in SPARK_METHODS]
        if spark:
            candidates.append({"backbone": backbone, "methods": spark})
    return candidates


def lineage_for(split_url: str, dataset_uri: str | None = None) -> Lineage:
    """SHA-256 of the split file and of the manifests it was made from (from summary.json)."""
    digest = hashlib.sha256(storage.read_bytes(split_url)).hexdigest()
    summary_url = split_url.rsplit("/", 1)[0] + "/summary.json"
    manifests = {}
    if storage.exists(summary_url):
        manifests = json.loads(storage.read_bytes(summary_url)).get("manifests", {})
    return Lineage(dataset_uri=dataset_uri or split_url, split_sha256=digest, manifests=manifests)


def run_candidate(
    candidate: dict[str, Any],
    split_url: str,
    models_dir: str | Path,
    *,
    options: dict[str, Any] | None = None,
    dataset_uri: str | None = None,
    track: bool = True,
) -> list[dict[str, Any]]:
    """Train one candidate; returns ``{bundle, run_id, accuracy, name, split_url}`` per
    bundle, ``bundle`` being its URL under ``models_dir``.

    Args:
        candidate: from :func:`plan_candidates`.
        split_url: the dataset split (split.parquet).
        models_dir: folder or URL (e.g. ``abfs://``) the bundles are published under.
        options: TrainConfig fields (epochs, learning_rate, weights, ...), and ``int8``
            (default True): add the int8 form, checked on the validation tiles.
        dataset_uri: the dataset Asset URI, recorded as lineage.
        track: log each bundle as an MLflow run.
    """
    options = dict(options or {})
    int8 = options.pop("int8", True)
    lineage = lineage_for(split_url, dataset_uri)
    out = []
    with tempfile.TemporaryDirectory(prefix="landuse-train-") as work:
        for bundle, history in _train(candidate, split_url, Path(work), options, lineage):
            if int8:
                bundle = _with_int8(bundle, split_url)
            url = publish_bundle(bundle, storage.join(str(models_dir), bundle.path.name))
            run_id = None
            if track:
                run_id = log_candidate(bundle, history, bundle_url=url)
            out.append({"bundle": url, "run_id": run_id, "name": bundle.spec.name,
                        "accuracy": bundle.spec.metrics.get("accuracy"),
                        "split_url": split_url})
    return out


def _train(candidate: dict[str, Any], split_url: str, work: Path, options: dict[str, Any],
           lineage: Lineage) -> list[tuple[Bundle, dict[str, list[float]]]]:
    """Train one candidate's bundles into the local folder ``work``."""
    backbone, methods = candidate["backbone"], candidate["methods"]
    if methods[0] in KERAS_METHODS:
        from landuse.models.keras_trainer import TrainConfig, train_keras

        config = TrainConfig(backbone=backbone, fine_tune=methods[0] == "fine-tune", **options)
        name = f"{backbone}-{config.method}"
        trained = train_keras(split_url, work / name, config, name=name, lineage=lineage)
        return [(trained.bundle, trained.history)]
    from landuse.models.featurize import featurize_and_classify
    from landuse.spark import local_spark

    spark = local_spark("landuse-featurize")
    weights = options.get("weights", "imagenet")
    return [(trained.bundle, {})
            for trained in featurize_and_classify(spark, split_url, work, backbone=backbone,
                                                  methods=tuple(methods), weights=weights,
                                                  lineage=lineage)]


def _with_int8(bundle: Bundle, split_url: str) -> Bundle:
    """The bundle with its int8 form, calibrated on training tiles and checked on the
    validation tiles the candidates are judged on."""
    from landuse.models.data import read_split
    from landuse.models.quantize import add_int8
    from landuse.tiles import read_tiles

    train, val, _ = read_split(split_url)
    if val.empty:
        return bundle  # nothing to check an int8 form on
    spec = bundle.spec.preprocessing
    calibration = train.sample(n=min(CALIBRATION_TILES, len(train)), random_state=0)
    val = val.iloc[:MAX_INT8_CHECK]
    return add_int8(bundle, read_tiles(calibration, spec), read_tiles(val, spec),
                    list(val["label"]))


def run_folder(models_root: str | Path, run_id: str) -> str:
    """The URL under which one training run's candidates are published."""
    return storage.join(str(models_root), "candidates", storage.run_segment(run_id))
