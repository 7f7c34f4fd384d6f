"""Task bodies more than one DAG runs: scoring a county-year and publishing its Asset.

Imports of the library stay inside the functions, so DAG files that import this module
parse fast.
"""

from __future__ import annotations

from typing import Any

from landuse_airflow.assets import PREDICTIONS, predictions_asset
from landuse_airflow.errors import fail_fast_on_bad_input


def resolve_model(model: str, root: str, framework: str = "onnx") -> tuple[str, str]:
    """The bundle (folder or URL) for ``champion`` or a named bundle, and the model id its
    predictions in ``framework`` will carry; the champion's bundle is a URL under the storage
    root, which any worker can load.

    Raises:
        ValueError: no champion yet, an invalid bundle, or one without that model form.
    """
    from landuse.models.bundle import load_bundle
    from landuse.models.runners import predictions_model_id
    from landuse.models.tracking import models_root, read_champion

    bundle = model
    if bundle == "champion":
        champion = read_champion(models_root(root))
        if champion is None:
            raise ValueError(f"no champion under {models_root(root)}: train first")
        bundle = champion["bundle"]
    return str(bundle), predictions_model_id(load_bundle(bundle), framework)


def score_and_publish(context: Any, county: str, year: int, bundle: str, *, root: str,
                      master: str = "local[2]", framework: str = "onnx",
                      batch_size: int = 32) -> dict[str, Any]:
    """Score one county-year on Spark, commit its predictions and emit their Asset event
    (through the task's ``PREDICTIONS`` alias outlet). Returns the event's ``extra``."""
    from landuse import storage
    from landuse.scoring.spark import score_on_spark
    from landuse.spark import local_spark
    from landuse.tiling import manifest_url

    spark = local_spark(f"landuse-score-{county}-{year}", master=master)
    with fail_fast_on_bad_input():
        result = score_on_spark(spark, manifest_url(root, county, year), bundle,
                                storage.join(root, "predictions"), framework=framework,
                                batch_size=batch_size)
    report = result.report or {}
    summary = {"county": county, "year": year, "url": result.outputs[(county, year)],
               "model_id": result.model_id, "tiles": result.tiles, "errors": result.errors,
               "seconds": round(result.seconds, 1), "storage_root": root,
               "accuracy": report.get("accuracy"),
               "group_accuracy": report.get("group_accuracy")}
    context["outlet_events"][PREDICTIONS].add(predictions_asset(county, year), extra=summary)
    return summary
