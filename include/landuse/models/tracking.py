"""Tracked candidates and the champion model.

Every candidate is an MLflow run (params, validation metrics, the confusion matrix as a
PNG, the bundle as an artifact). By default MLflow keeps a local SQLite store in the
project (``mlruns/``); ``MLFLOW_TRACKING_URI`` points at a tracking server instead.

The best candidate of a training run by validation accuracy (ties: group accuracy) is the
challenger. It replaces the champion only when it scores better than the current champion
on the same validation tiles, the champion being re-evaluated in this run with the same
code (ties keep the champion), or when promotion is forced. A new champion becomes a new
version of the registered model ``landuse`` with the alias ``champion``, and the pointer file
``{models_root}/champion.json`` (written atomically; scoring reads it without MLflow) names
its bundle by URL. Every decision, kept or not, is written to
``{models_root}/decisions/`` and tagged on the challenger's MLflow run. Nothing changes
until every candidate succeeded.

Then the champion in force is evaluated once on the split's *test* counties, which neither
training nor the choice saw: ``{models_root}/evaluations/{model_id}.json`` holds those
metrics and confusion matrices (the figures reports quote, and the model-error rates that
change reports derive their expected false change from), the same figures on the test tiles
of real land that analysts reviewed (``metrics_reviewed``; None without any), and whether the
model was trained on synthetic imagery only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from landuse import config, storage
from landuse.models.bundle import Bundle, BundleError, load_bundle
from landuse.models.evaluation import UnfitModel, evaluate_on_test_part, evaluate_on_validation
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


def log_candidate(bundle: Bundle, history: dict[str, list[float]] | None = None,
                  bundle_url: str | None = None) -> str:
    """Record one candidate as an MLflow run (the bundle folder as artifact ``bundle``, its
    published URL as tag ``bundle_url``); returns the run id."""
    import mlflow

    experiment = _experiment(mlflow)
    spec = bundle.spec
    with mlflow.start_run(experiment_id=experiment, run_name=spec.name) as run:
        params = {"backbone": spec.backbone, "method": spec.method,
                  **{k: v for k, v in spec.params.items() if v is not None}}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.set_tags({"model_id": bundle.model_id,
                         "dataset_uri": spec.lineage.dataset_uri or "",
                         "split_sha256": spec.lineage.split_sha256 or "",
                         "bundle_url": bundle_url or str(bundle.path)})
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
    """Where bundles, the champion pointer and the decisions live: ``{storage_root}/models``
    (a folder or ``abfs://``), so every machine that reaches the storage root reaches them."""
    return storage.join(storage_root, "models")


def champion_url(models_root: str) -> str:
    """Where the champion pointer lives."""
    return storage.join(models_root, "champion.json")


def read_champion(models_root: str) -> dict[str, Any] | None:
    """The current champion pointer, or None."""
    url = champion_url(models_root)
    return json.loads(storage.read_bytes(url)) if storage.exists(url) else None


def promote_best(candidates: list[dict[str, Any]], models_root: str, *,
                 split_url: str | None = None, force: bool = False) -> dict[str, Any]:
    """Choose the best candidate (the challenger) and make it the champion if it beats the
    current one on this split's validation tiles, or if ``force``.

    The current champion is evaluated now with :func:`evaluate_on_validation`, the code the
    trainers score candidates with; ties keep it. A champion whose classes or input size do
    not fit the split, or whose bundle cannot be loaded, loses (the reason is recorded).
    The decision goes to ``{models_root}/decisions/`` and to the challenger's MLflow run;
    ``champion.json`` and the registry alias change only when the champion does.

    Args:
        candidates: dicts with ``bundle`` (folder or URL), ``run_id`` (None when untracked)
            and ``split_url`` (the split they were evaluated on).
        models_root: folder or URL holding ``champion.json``.
        split_url: the split, when the candidates do not name it.
        force: promote the challenger whatever the comparison says.

    Returns:
        The champion pointer now in force (``champion.json``), except that ``decision`` is
        this call's decision: ``decision`` (first, promoted, kept, forced), ``changed``,
        both scores, the incumbent's model id, the split's SHA-256 and the reason.

    Raises:
        ValueError: no candidates, a candidate without validation accuracy, candidates of
            different splits, or a split that changed since they were evaluated.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    scored = []
    for candidate in candidates:
        bundle = load_bundle(candidate["bundle"])
        accuracy = bundle.spec.metrics.get("accuracy")
        if accuracy is None:
            raise ValueError(f"candidate {candidate['bundle']} has no validation accuracy")
        scored.append((accuracy, bundle.spec.metrics.get("group_accuracy") or 0.0, bundle,
                       candidate))
    accuracy, group_accuracy, best, chosen = max(scored, key=lambda s: (s[0], s[1]))
    challenger = {"bundle": str(chosen["bundle"]), "model_id": best.model_id,
                  "name": best.spec.name, "accuracy": accuracy,
                  "group_accuracy": group_accuracy, "run_id": chosen.get("run_id")}
    split_url = split_url or _common_split(candidates)
    split_sha256 = _split_sha256(split_url, best) if split_url else None
    incumbent = read_champion(models_root)
    decision = _decide(challenger, incumbent, split_url, split_sha256, force,
                       best.spec.preprocessing.input_size)
    if decision["changed"]:
        pointer: dict[str, Any] = {
            **challenger,
            "registered_model": None,
            "version": None,
            "promoted": decision["decided"],
            "candidates": [{"bundle": str(c["bundle"]), "accuracy": a}
                           for a, _, _, c in scored],
            "decision": decision,
        }
        if challenger["run_id"]:
            pointer.update(_register(challenger["run_id"]))
        storage.write_bytes(champion_url(models_root), json.dumps(pointer, indent=2).encode())
    else:  # kept: champion.json and the registry stay as they are
        pointer = {**(incumbent or {}), "decision": decision}
    _record_decision(models_root, decision)
    log.info("champion decision %s: %s", decision["decision"], decision["reason"])
    return pointer


def evaluation_url(models_root: str, model_id: str) -> str:
    """Where a model's latest held-out (test) evaluation lives."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)
    return storage.join(models_root, "evaluations", f"{safe}.json")


def read_evaluation(models_root: str, model_id: str) -> dict[str, Any] | None:
    """A model's latest test evaluation (see :func:`evaluate_on_test`), or None."""
    url = evaluation_url(models_root, model_id)
    return json.loads(storage.read_bytes(url)) if storage.exists(url) else None


def evaluate_on_test(champion: dict[str, Any], models_root: str,
                     split_url: str) -> dict[str, Any]:
    """Evaluate the champion on the split's test counties and record it (atomically) with the
    split it came from; returned as written. A split without test counties is recorded too,
    with ``metrics`` None, so reports can say that no held-out figure exists.

    Whether the model learned from synthetic imagery only is read from the summary of the
    split it was trained on (kept from an earlier evaluation when that was another split):
    reviewed tiles of a real county in training make it False. ``metrics_reviewed`` holds
    the figures on the test part's reviewed real tiles apart (None without any).
    """
    bundle = load_bundle(champion["bundle"])
    summary_url = split_url.rsplit("/", 1)[0] + "/summary.json"
    summary = json.loads(storage.read_bytes(summary_url)) if storage.exists(summary_url) else {}
    digest = hashlib.sha256(storage.read_bytes(split_url)).hexdigest()
    earlier = read_evaluation(models_root, bundle.model_id) or {}
    synthetic = (summary.get("synthetic_training") if bundle.spec.lineage.split_sha256 == digest
                 else earlier.get("trained_on_synthetic"))
    record: dict[str, Any] = {
        "model_id": bundle.model_id, "split_url": split_url, "split_sha256": digest,
        "trained_on_synthetic": synthetic, "metrics": None, "metrics_reviewed": None,
        "evaluated": dt.datetime.now(dt.UTC).isoformat(),
    }
    try:
        record["metrics"], record["metrics_reviewed"] = evaluate_on_test_part(bundle,
                                                                              split_url)
    except UnfitModel as err:
        record["note"] = str(err)
        log.warning("no held-out figure for %s: %s", bundle.model_id, err)
    else:
        m = record["metrics"]
        log.info("champion %s on test counties %s: accuracy %.4f, group accuracy %.4f",
                 bundle.model_id, m["counties"], m["accuracy"], m.get("group_accuracy") or 0)
        reviewed = record["metrics_reviewed"]
        if reviewed:
            log.info("champion %s on %d reviewed real test tiles of %s: accuracy %.4f",
                     bundle.model_id, reviewed["tiles"], reviewed["counties"],
                     reviewed["accuracy"])
        if champion.get("run_id"):
            _log_test_metrics(champion["run_id"], m, reviewed)
    storage.write_bytes(evaluation_url(models_root, bundle.model_id),
                        json.dumps(record, indent=2).encode())
    return record


def _log_test_metrics(run_id: str, metrics: dict[str, Any],
                      reviewed: dict[str, Any] | None = None) -> None:
    import mlflow
    from mlflow import MlflowClient

    _experiment(mlflow)
    client = MlflowClient()
    for key in ("accuracy", "group_accuracy"):
        if metrics.get(key) is not None:
            client.log_metric(run_id, f"test_{key}", float(metrics[key]))
        if reviewed and reviewed.get(key) is not None:
            client.log_metric(run_id, f"test_reviewed_{key}", float(reviewed[key]))
    client.set_tag(run_id, "test_counties", ",".join(metrics["counties"]))


def _common_split(candidates: list[dict[str, Any]]) -> str | None:
    splits = {c["split_url"] for c in candidates if c.get("split_url")}
    if len(splits) > 1:
        raise ValueError(f"candidates were evaluated on different splits {sorted(splits)}")
    return splits.pop() if splits else None


def _split_sha256(split_url: str, challenger: Bundle) -> str:
    """The split's SHA-256, which must be the one the challenger was evaluated on."""
    digest = hashlib.sha256(storage.read_bytes(split_url)).hexdigest()
    trained_on = challenger.spec.lineage.split_sha256
    if trained_on and trained_on != digest:
        raise ValueError(f"split {split_url} changed since {challenger.model_id} was evaluated "
                         "on it: its scores cannot be compared with the champion's")
    return digest


def _decide(challenger: dict[str, Any], incumbent: dict[str, Any] | None,
            split_url: str | None, split_sha256: str | None, force: bool,
            input_size: int) -> dict[str, Any]:
    """The decision record: who wins, both scores, and why."""
    decision: dict[str, Any] = {
        "decision": "first",
        "changed": True,
        "reason": "no champion yet",
        "forced": force,
        "challenger_model_id": challenger["model_id"],
        "challenger_bundle": challenger["bundle"],
        "challenger_run_id": challenger["run_id"],
        "challenger_accuracy": challenger["accuracy"],
        "challenger_group_accuracy": challenger["group_accuracy"],
        "incumbent_model_id": None,
        "incumbent_bundle": None,
        "incumbent_accuracy": None,
        "incumbent_group_accuracy": None,
        "split_url": split_url,
        "split_sha256": split_sha256,
        "decided": dt.datetime.now(dt.UTC).isoformat(),
    }
    if incumbent is None:
        return decision
    decision.update(incumbent_model_id=incumbent.get("model_id"),
                    incumbent_bundle=incumbent.get("bundle"))
    if split_url is None:
        raise ValueError("a champion exists, so the split is needed to compare against it: "
                         "pass split_url")
    unfit = None
    try:
        current = load_bundle(incumbent["bundle"])
        decision["incumbent_model_id"] = current.model_id
        metrics = evaluate_on_validation(current, split_url, input_size=input_size)
    except (UnfitModel, BundleError) as err:  # unreachable storage is raised: a retry helps
        unfit = str(err)
    else:
        decision.update(incumbent_accuracy=metrics.get("accuracy"),
                        incumbent_group_accuracy=metrics.get("group_accuracy") or 0.0)
    if unfit is not None:
        decision.update(decision="promoted", reason="the champion cannot be evaluated on this "
                        f"split, so the challenger wins: {unfit}")
        return decision
    challenger_score = (challenger["accuracy"], challenger["group_accuracy"])
    incumbent_score = (decision["incumbent_accuracy"], decision["incumbent_group_accuracy"])
    scores = (f"challenger {_scores(challenger_score)}, champion {_scores(incumbent_score)} "
              "on the same validation tiles")
    if challenger_score > incumbent_score:
        decision.update(decision="promoted", reason=f"the challenger is better: {scores}")
    elif force:
        decision.update(decision="forced", reason=f"promotion forced: {scores}")
    else:
        decision.update(decision="kept", changed=False,
                        reason=f"the challenger is not better (ties keep the champion): {scores}")
    return decision


def _scores(score: tuple[float, float]) -> str:
    return f"accuracy {score[0]:.4f} / group accuracy {score[1]:.4f}"


def _record_decision(models_root: str, decision: dict[str, Any]) -> str:
    """Write the decision to the history (one atomic object per decision) and tag it on the
    challenger's MLflow run; returns the history object's URL."""
    stamp = dt.datetime.fromisoformat(decision["decided"]).strftime("%Y%m%dT%H%M%S%fZ")
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", decision["challenger_model_id"])
    url = storage.join(models_root, "decisions", f"{stamp}-{model}.json")
    storage.write_bytes(url, json.dumps(decision, indent=2).encode())
    run_id = decision["challenger_run_id"]
    if run_id:
        import mlflow
        from mlflow import MlflowClient

        _experiment(mlflow)
        client = MlflowClient()
        client.set_tag(run_id, "champion_decision", decision["decision"])
        client.set_tag(run_id, "champion_decision_reason", decision["reason"][:5000])
        client.set_tag(run_id, "incumbent_model_id", decision["incumbent_model_id"] or "")
        for key in ("challenger_accuracy", "incumbent_accuracy"):
            if decision[key] is not None:
                client.log_metric(run_id, key, float(decision[key]))
    return url


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
