"""Tracked candidates and the champion model.

Every candidate is an MLflow run (params, validation metrics, the confusion matrix as a
PNG, the bundle as an artifact). By default MLflow keeps a local SQLite store in the
project (``mlruns/``); ``MLFLOW_TRACKING_URI`` points at a tracking server instead.

The best candidate of a training run by validation accuracy (ties: group accuracy) becomes
the champion: a new version of the registered model ``landuse`` with the alias
``champion``, and a pointer file ``{models_root}/champion.json`` written atomically, which
scoring reads without needing MLflow. Nothing changes until every candidate succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from landuse import config, storage
from landuse.models.bundle import Bundle, load_bundle
from landuse.models.metrics import confusion_png

log = logging.getLogger(__name__)
EXPERIMENT = "landuse"
REGISTERED_MODEL = "landuse"
CHAMPION_ALIAS = "champion"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or the project's local SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = config.PROJECT_ROOT / "mlruns"
    folder.mkdir(exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _experiment(mlflow: Any) -> str:
    mlflow.set_tracking_uri(tracking_uri())
    found = mlflow.get_experiment_by_name(EXPERIMENT)
    if found:
        return str(found.experiment_id)
    artifacts = None
    if tracking_uri().startswith("sqlite:///"):
        artifacts = (Path(tracking_uri().removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return str(mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts))


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key in ("accuracy", "group_accuracy", "onnx_keras_max_abs_diff"):
        if isinstance(metrics.get(key), int | float):
            out[key] = float(metrics[key])
    for cls, values in metrics.get("per_class", {}).items():
        for name in ("precision", "recall"):
            if values.get(name) is not None:
                out[f"{name}_{cls}"] = float(values[name])
    return out


def log_candidate(bundle: Bundle, history: dict[str, list[float]] | None = None) -> str:
    """Record one candidate as an MLflow run; returns the run id."""
    import mlflow

    experiment = _experiment(mlflow)
    spec = bundle.spec
    with mlflow.start_run(experiment_id=experiment, run_name=spec.name) as run:
        params = {"backbone": spec.backbone, "method": spec.method,
                  **{k: v for k, v in spec.params.items() if v is not None}}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.set_tags({"model_id": bundle.model_id,
                         "dataset_uri": spec.lineage.dataset_uri or "",
                         "split_sha256": spec.lineage.split_sha256 or ""})
        mlflow.log_metrics(_flat_metrics(spec.metrics))
        for key, values in (history or {}).items():
            for step, value in enumerate(values):
                mlflow.log_metric(f"train_{key}", value, step=step)
        if spec.metrics.get("confusion"):
            with tempfile.TemporaryDirectory() as tmp:
                png = confusion_png(spec.metrics, Path(tmp) / "confusion.png", spec.name)
                mlflow.log_artifact(str(png))
        mlflow.log_artifacts(str(bundle.path), artifact_path="bundle")
        return str(run.info.run_id)


def models_root(storage_root: str) -> str:
    """Where bundles and the champion pointer live: ``{storage_root}/models`` for a local
    root; bundles are local folders, so a blob root keeps them in the project's output/."""
    base = storage_root if storage.is_local(storage_root) else str(config.PROJECT_ROOT / "output")
    return storage.join(base, "models")


def champion_url(models_root: str) -> str:
    """Where the champion pointer lives."""
    return storage.join(models_root, "champion.json")


def read_champion(models_root: str) -> dict[str, Any] | None:
    """The current champion pointer, or None."""
    url = champion_url(models_root)
    return json.loads(storage.read_bytes(url)) if storage.exists(url) else None


def promote_best(candidates: list[dict[str, Any]], models_root: str) -> dict[str, Any]:
    """Make the best candidate the champion (registry alias and pointer file).

    Args:
        candidates: dicts with ``bundle`` (path) and ``run_id`` (may be None when untracked).
        models_root: folder holding ``champion.json``.

    Raises:
        ValueError: no candidates, or a candidate without validation accuracy.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    scored = []
    for candidate in candidates:
        bundle = load_bundle(candidate["bundle"])
        accuracy = bundle.spec.metrics.get("accuracy")
        if accuracy is None:
            raise ValueError(f"candidate {bundle.path} has no validation accuracy")
        scored.append((accuracy, bundle.spec.metrics.get("group_accuracy") or 0.0, bundle,
                       candidate.get("run_id")))
    accuracy, group_accuracy, best, run_id = max(scored, key=lambda s: (s[0], s[1]))
    pointer: dict[str, Any] = {
        "bundle": str(best.path),
        "model_id": best.model_id,
        "name": best.spec.name,
        "accuracy": accuracy,
        "group_accuracy": group_accuracy,
        "run_id": run_id,
        "registered_model": None,
        "version": None,
        "promoted": dt.datetime.now(dt.UTC).isoformat(),
        "candidates": [{"bundle": str(b.path), "accuracy": a} for a, _, b, _ in scored],
    }
    if run_id:
        pointer.update(_register(run_id))
    storage.write_bytes(champion_url(models_root), json.dumps(pointer, indent=2).encode())
    log.info("champion: %s (accuracy %.4f)", best.model_id, accuracy)
    return pointer


def _register(run_id: str) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    _experiment(mlflow)
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name='{REGISTERED_MODEL}'"):
        client.create_registered_model(REGISTERED_MODEL)
    source = f"{client.get_run(run_id).info.artifact_uri}/bundle"
    version = client.create_model_version(REGISTERED_MODEL, source=source, run_id=run_id)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
    return {"registered_model": REGISTERED_MODEL, "version": int(version.version)}
