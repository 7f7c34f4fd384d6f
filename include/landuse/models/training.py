"""The retraining stage: candidates from backbones × methods, each tracked, then a champion.

Methods: ``head`` (frozen base, new head) and ``fine-tune`` (then the last blocks) train
in Keras; ``logreg`` and ``random-forest`` featurize on Spark and fit Spark ML classifiers
(the MMLSpark route), one Spark job per backbone for both.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from landuse import storage
from landuse.models.bundle import Lineage

KERAS_METHODS = ("head", "fine-tune")
SPARK_METHODS = ("logreg", "random-forest")
BACKBONES = ("squeezenet", "resnet50")


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
    """Train one candidate; returns ``{bundle, run_id, accuracy, name}`` per bundle written.

    Args:
        candidate: from :func:`plan_candidates`.
        split_url: the dataset split (split.parquet).
        models_dir: local folder that receives the bundles.
        options: TrainConfig fields (epochs, learning_rate, weights, ...).
        dataset_uri: the dataset Asset URI, recorded as lineage.
        track: log each bundle as an MLflow run.
    """
    from landuse.models.keras_trainer import TrainConfig, train_keras

    options = dict(options or {})
    lineage = lineage_for(split_url, dataset_uri)
    backbone, methods = candidate["backbone"], candidate["methods"]
    results: list[tuple[Any, dict[str, list[float]]]] = []
    if methods[0] in KERAS_METHODS:
        config = TrainConfig(backbone=backbone, fine_tune=methods[0] == "fine-tune", **options)
        name = f"{backbone}-{config.method}"
        trained = train_keras(split_url, Path(models_dir) / name, config, name=name,
                              lineage=lineage)
        results.append((trained.bundle, trained.history))
    else:
        from landuse.models.featurize import featurize_and_classify
        from landuse.spark import local_spark

        spark = local_spark("landuse-featurize")
        weights = options.get("weights", "imagenet")
        for trained in featurize_and_classify(spark, split_url, Path(models_dir),
                                              backbone=backbone, methods=tuple(methods),
                                              weights=weights, lineage=lineage):
            results.append((trained.bundle, {}))
    out = []
    for bundle, history in results:
        run_id = None
        if track:
            from landuse.models.tracking import log_candidate

            run_id = log_candidate(bundle, history)
        out.append({"bundle": str(bundle.path), "run_id": run_id, "name": bundle.spec.name,
                    "accuracy": bundle.spec.metrics.get("accuracy")})
    return out


def run_folder(models_root: str | Path, run_id: str) -> Path:
    """A safe folder name for one training run's candidates."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"
    return Path(models_root) / "candidates" / safe
