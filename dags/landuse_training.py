"""landuse_training: transfer-learning candidates on the dataset, tracked, best one promoted.

Scheduled on the ``naip_dataset`` Asset (the split's URL comes from the triggering event),
and manual with Params. Candidates (backbones × methods) run as mapped tasks in the ``gpu``
pool, on the queue named by ``LANDUSE_GPU_QUEUE`` (default ``default``) of the executor named by
``LANDUSE_GPU_EXECUTOR`` (default: the default executor) so a GPU worker can take them.
Bundles are published under ``{storage_root}/models`` (a folder or ``abfs://``), so any
worker can load them by URL. ``select_best`` takes the best candidate by validation
accuracy as the challenger; it replaces the champion only when it beats it on this run's
validation tiles (both evaluated in this run; ties keep the champion) or when the
``force_promotion`` Param is set. The decision is returned, recorded in MLflow and under
``{storage_root}/models/decisions/``; the ``champion_model`` Asset event is emitted only when
the champion changed. A failed candidate fails the run before any champion change.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import AssetAlias, Param, dag, get_current_context, task

from landuse_airflow import params
from landuse_airflow.assets import CHAMPION_MODEL, NAIP_DATASET
from landuse_airflow.errors import fail_fast_on_bad_input

GPU_QUEUE = os.environ.get("LANDUSE_GPU_QUEUE", "default")
# An executor that honours queues (docker-compose.yaml: CeleryExecutor beside LocalExecutor);
# it must be one [core] executor lists, or the DAG does not parse.
GPU_EXECUTOR = os.environ.get("LANDUSE_GPU_EXECUTOR") or None
# Airflow 3 emits an event for every Asset a successful task declares as an outlet; there is
# no skipping one. An alias outlet emits only the events the task adds to it, so
# select_best adds the champion_model event only when the champion changed.
CHAMPION_CHANGES = AssetAlias("landuse_champion_changes")


@dag(
    dag_id="landuse_training",
    schedule=[NAIP_DATASET],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["landuse", "training"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
    params={
        "split_url": Param(None, type=["null", "string"], title="Split (split.parquet)",
                           description="Empty: the triggering dataset event's split, else "
                           "{storage_root}/naip/dataset/split.parquet."),
        "backbones": Param(["squeezenet"], type="array", minItems=1, uniqueItems=True,
                           items={"type": "string", "enum": ["squeezenet", "resnet50"]},
                           title="Backbones"),
        "methods": Param(["head", "logreg"], type="array", minItems=1, uniqueItems=True,
                         items={"type": "string",
                                "enum": ["head", "fine-tune", "logreg", "random-forest"]},
                         title="Methods"),
        "epochs": Param(5, type="integer", minimum=1, maximum=500, title="Epochs"),
        "learning_rate": Param(0.001, type="number", exclusiveMinimum=0, maximum=1,
                               title="Learning rate"),
        "fine_tune_epochs": Param(3, type="integer", minimum=1, title="Fine-tune epochs"),
        "weights": Param("imagenet", type="string", title="Backbone weights",
                         description="imagenet, a local weights file (ResNet-50 offline), "
                         "or random (tests only)."),
        "force_promotion": Param(False, type="boolean", title="Force promotion",
                                 description="Make this run's best candidate the champion even "
                                 "if it does not beat the current one."),
        "storage_root": params.storage_root(),
    },
)
def landuse_training() -> None:
    @task
    def plan() -> list[dict[str, Any]]:
        """Validate the params; one entry per candidate, with the split to train on."""
        from landuse import storage
        from landuse.models.training import plan_candidates

        context = get_current_context()
        p = context["params"]
        split_url = p["split_url"]
        events = context["triggering_asset_events"].get(NAIP_DATASET, [])
        if not split_url and events:
            split_url = events[-1].extra["url"]
        split_url = split_url or storage.join(p["storage_root"], "naip", "dataset",
                                              "split.parquet")
        with fail_fast_on_bad_input():
            params.check_places({**p, "split_url": split_url})  # before any read or write
            if not storage.exists(split_url):
                raise ValueError(f"split {split_url} does not exist: run naip_dataset first")
            candidates = plan_candidates(p["backbones"], p["methods"])
        return [{**c, "split_url": split_url} for c in candidates]

    @task(pool="gpu", queue=GPU_QUEUE, executor=GPU_EXECUTOR, max_active_tis_per_dagrun=2)
    def train_candidate(candidate: dict[str, Any]) -> list[dict[str, Any]]:
        """Train, evaluate and track one candidate; its bundles go under this run's folder."""
        from landuse.models.tracking import models_root
        from landuse.models.training import run_candidate, run_folder, visible_gpus

        print("GPUs visible to TensorFlow:", visible_gpus())
        context = get_current_context()
        p = context["params"]
        options = {"epochs": p["epochs"], "learning_rate": p["learning_rate"],
                   "fine_tune_epochs": p["fine_tune_epochs"], "weights": p["weights"]}
        folder = run_folder(models_root(p["storage_root"]), context["run_id"])
        with fail_fast_on_bad_input():
            return run_candidate(candidate, candidate["split_url"], folder, options=options,
                                 dataset_uri=NAIP_DATASET.uri)

    @task(outlets=[CHAMPION_CHANGES])
    def select_best(results: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """Challenge the champion with the best candidate, then evaluate the champion on the
        test counties (and apart on their reviewed real tiles); returns the decision and the
        test figures."""
        from landuse.models.tracking import (
            champion_url,
            evaluate_on_test,
            models_root,
            promote_best,
        )

        context = get_current_context()
        p = context["params"]
        root = models_root(p["storage_root"])
        candidates = [r for rs in results for r in rs]
        with fail_fast_on_bad_input():
            champion = promote_best(candidates, root, force=p["force_promotion"])
            # once chosen, the champion is measured on the counties nothing was chosen on
            evaluation = evaluate_on_test(champion, root, candidates[0]["split_url"])
        test = evaluation["metrics"] or {}
        reviewed = evaluation.get("metrics_reviewed") or {}
        figures = {"test_accuracy": test.get("accuracy"), "test_counties": test.get("counties"),
                   "reviewed_test_accuracy": reviewed.get("accuracy"),
                   "reviewed_test_tiles": reviewed.get("tiles", 0)}
        decision: dict[str, Any] = champion["decision"]
        if decision["changed"]:
            context["outlet_events"][CHAMPION_CHANGES].add(CHAMPION_MODEL, extra={
                "bundle": champion["bundle"], "model_id": champion["model_id"],
                "validation_accuracy": champion["accuracy"], **figures,
                "champion_url": champion_url(root), "decision": decision["decision"],
            })
        return {**decision, **figures}

    select_best(train_candidate.expand(candidate=plan()))


landuse_training()
