"""tile_scoring: score a small set of tiles inside the task, without Spark.

For a spot check (a county's held-out tiles, a folder of chips an analyst picked, a new
bundle before it is promoted) a Spark job is overhead. ``plan`` checks the places the run
names and resolves the model (the champion by default) in the chosen form; ``choose_form``
follows the branch of that form, where one of the in-process inference operators
(:mod:`landuse_airflow.operators.inference`: ONNX Runtime fp32 or int8, Keras, TFLite)
scores the tiles in batches and writes one Parquet of predictions atomically to
``{storage_root}/tile_scoring/{run id}/predictions.parquet``. A tile that cannot be read is
an error row; a bad source or bundle fails at once, without retries; a stopped task stops
between batches and writes nothing. County-scale work belongs to ``landuse_scoring``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from landuse_airflow import params
from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.operators.inference import (
    KerasInferenceOperator,
    OnnxInferenceOperator,
    OnnxInt8InferenceOperator,
    TFLiteInferenceOperator,
)

# One operator per model form: a run's graph says which form scored its tiles.
OPERATORS = {op.framework: op for op in (OnnxInferenceOperator, OnnxInt8InferenceOperator,
                                         KerasInferenceOperator, TFLiteInferenceOperator)}
PLANNED = "{{ ti.xcom_pull(task_ids='plan', key='%s') }}"


def _task_id(framework: str) -> str:
    return f"score_{framework.replace('-', '_')}"


@dag(
    dag_id="tile_scoring",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["landuse", "scoring"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    params={
        "source": Param(type="string", minLength=1, title="Tiles",
                        description="A manifest, a glob of manifests, or a folder / glob of "
                        "PNG chips (local or abfs://)."),
        "model": Param("champion", type="string", minLength=1, title="Model",
                       description="'champion', or a bundle folder or URL."),
        "framework": Param("onnx", type="string", enum=list(OPERATORS), title="Model form",
                           description="onnx-int8: the bundle's int8 form, kept only where "
                           "it was faster than fp32 and agreed with it on the machine that "
                           "built it (a bundle without it fails in plan, saying why); keras "
                           "and tflite need a bundle that carries them."),
        "batch_size": Param(32, type="integer", minimum=1, maximum=4096, title="Batch size",
                            description="Tiles per model call."),
        "storage_root": params.storage_root(),
    },
)
def tile_scoring() -> None:
    @task(multiple_outputs=True)
    def plan() -> dict[str, Any]:
        """Check the places, resolve the model in the chosen form, name the output."""
        from landuse import storage
        from landuse_airflow.stages import resolve_model

        context = get_current_context()
        p = context["params"]
        with fail_fast_on_bad_input():
            params.check_places(p)  # before anything is read or written
            bundle, model_id = resolve_model(p["model"], p["storage_root"], p["framework"])
        output = storage.join(p["storage_root"], "tile_scoring",
                              storage.run_segment(context["run_id"]), "predictions.parquet")
        return {"bundle": bundle, "model_id": model_id, "output_url": output}

    @task.branch
    def choose_form() -> str:
        """The branch of the chosen model form."""
        return _task_id(get_current_context()["params"]["framework"])

    form = choose_form()
    plan() >> form
    for framework, operator in OPERATORS.items():
        form >> operator(
            task_id=_task_id(framework), source="{{ params.source }}",
            bundle_path=PLANNED % "bundle", output_url=PLANNED % "output_url",
            batch_size="{{ params.batch_size }}",
        )


tile_scoring()
