"""In-process inference operators: score a small set of tiles with a model bundle.

For small jobs (a validation set, a spot check, a county of a few hundred tiles) a Spark job
is pure overhead: these operators run the library's batch loop
(:func:`landuse.scoring.predict.score_frame`) inside the task and write one Parquet file of
predictions atomically. County-scale runs belong on Spark
(:mod:`landuse_airflow.operators.spark_scoring`).

One operator per framework, so a DAG says which model form it trusts::

    OnnxInferenceOperator(task_id="score", source="{{ params.tiles }}",
                          bundle_path="/models/champion", output_url="/out/predictions.parquet")

A tile that cannot be read becomes an error row, never a failed task; a bad source or bundle
fails the task at once (no retry); ``on_kill`` stops between batches and writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowTaskTerminated

from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.hooks.bundle import ModelBundleHook
from landuse_airflow.params import rendered_number

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import Context

# Progress is logged about this often (in batches), not on every batch.
_LOG_EVERY = 10


def _check_batch_size(value: Any) -> int:
    """The batch size as a positive int; ValueError naming it otherwise."""
    size: int = rendered_number(value, int, "batch_size")
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {value!r}")
    return size


class BundleInferenceOperator(BaseOperator):
    """Score tiles with a model bundle in this task's process; subclasses fix the framework.

    Args:
        source: a manifest, a glob of manifests, or a folder / glob of PNG tiles (templated).
        bundle_path: the bundle folder, on local disk (templated).
        output_url: where the predictions Parquet goes, local or ``abfs://`` (templated).
        batch_size: tiles per model call; the stop flag is checked between batches
            (templated).
        threads: inference threads (ONNX Runtime, TFLite); one, as Airflow workers run
            several tasks at once.

    Returns (XCom): ``tiles``, ``scored``, ``errors``, ``model_id``, ``framework``,
    ``output_url``, ``seconds`` and ``report`` (accuracy report when the tiles have labels,
    else None).
    """

    framework: ClassVar[str] = ""
    template_fields: Sequence[str] = ("source", "bundle_path", "output_url", "batch_size")
    ui_color = "#d5e8d4"

    def __init__(
        self,
        *,
        source: str,
        bundle_path: str,
        output_url: str,
        batch_size: int | str = 32,
        threads: int = 1,
        **kwargs: Any,
    ) -> None:
        if not self.framework:
            raise TypeError(
                "BundleInferenceOperator is a base class: use OnnxInferenceOperator, "
                "OnnxInt8InferenceOperator, KerasInferenceOperator or TFLiteInferenceOperator"
            )
        if not isinstance(batch_size, str):  # a template is checked once rendered
            _check_batch_size(batch_size)
        super().__init__(**kwargs)
        self.source = source
        self.bundle_path = bundle_path
        self.output_url = output_url
        self.batch_size = batch_size
        self.threads = threads
        # A plain flag, not a threading.Event: operators are deep-copied when DAGs are
        # parsed and mapped, and a lock cannot be. on_kill runs in the task's own process
        # (from the SIGTERM handler), so the batch loop sees the flag at its next check.
        self._stop_requested = False

    @cached_property
    def hook(self) -> ModelBundleHook:
        """The bundle hook, built on first use, i.e. after the templates were rendered."""
        return ModelBundleHook(self.bundle_path, threads=self.threads)

    def execute(self, context: Context) -> dict[str, Any]:
        """Load the tiles, score them batch by batch, write the predictions atomically."""
        import pyarrow as pa

        from landuse import storage
        from landuse.scoring.predict import check_tiles_fit, load_source

        started = time.perf_counter()
        with fail_fast_on_bad_input():  # a missing source or broken bundle will not heal
            self.batch_size = _check_batch_size(self.batch_size)
            rows = load_source(self.source)
            check_tiles_fit(rows, self.bundle_path, self.hook.bundle.spec.preprocessing)
            runner = self.hook.get_runner(self.framework)
            model_id = runner.model_id  # the int8 form's is its own
            classes = list(self.hook.bundle.spec.classes)
        total = len(rows)
        batches = (total + self.batch_size - 1) // self.batch_size
        self.log.info("scoring %d tiles from %s with %s (%s) in %d batches of %d", total,
                      self.source, model_id, self.framework, batches, self.batch_size)
        tables: list[pa.Table] = []
        with fail_fast_on_bad_input():  # e.g. a model that returns the wrong class count
            for number, start in enumerate(range(0, total, self.batch_size)):
                self._stop_if_asked(start, total)
                tables.append(self._score_batch(rows.iloc[start:start + self.batch_size], runner))
                if (number + 1) % _LOG_EVERY == 0:
                    self.log.info("scored %d of %d tiles", min(start + self.batch_size, total),
                                  total)
        self._stop_if_asked(total, total)  # a kill during the last batch must not publish
        table = pa.concat_tables(tables)
        storage.write_parquet(self.output_url, table)

        frame = table.select(["label", "predicted", "error"]).to_pandas()
        errors = int(frame["error"].notna().sum())
        report = self._report(frame, classes)
        seconds = time.perf_counter() - started
        self.log.info("wrote %d predictions (%d error rows) to %s in %.1f s", total, errors,
                      self.output_url, seconds)
        if errors:
            first = frame["error"].dropna().iloc[0]
            self.log.warning("%d of %d tiles could not be scored, e.g. %s", errors, total, first)
        return {
            "tiles": total,
            "scored": total - errors,
            "errors": errors,
            "model_id": model_id,
            "framework": self.framework,
            "output_url": self.output_url,
            "seconds": round(seconds, 3),
            "report": report,
        }

    def on_kill(self) -> None:
        """Ask the batch loop to stop before its next batch; nothing is written then."""
        self._stop_requested = True
        self.log.warning("stop requested: %s stops before its next batch", self.task_id)

    def _stop_if_asked(self, done: int, total: int) -> None:
        if self._stop_requested:
            raise AirflowTaskTerminated(
                f"{self.task_id} was stopped after {done} of {total} tiles; "
                f"nothing was written to {self.output_url}"
            )

    def _score_batch(self, rows: Any, runner: Any) -> pa.Table:
        from landuse.scoring.predict import score_frame, to_table

        # Arrow per batch: concatenating Arrow tables keeps the schema exact, where
        # concatenating pandas frames would re-guess the all-null columns' dtypes.
        return to_table(score_frame(rows, runner, self.batch_size))

    @staticmethod
    def _report(frame: Any, classes: list[str]) -> dict[str, Any] | None:
        from landuse.scoring.predict import accuracy_report

        return accuracy_report(frame, classes)


class OnnxInferenceOperator(BundleInferenceOperator):
    """Score with the bundle's ONNX model through ONNX Runtime (every bundle has one)."""

    framework: ClassVar[str] = "onnx"


class OnnxInt8InferenceOperator(BundleInferenceOperator):
    """Score with the bundle's int8 ONNX form (made and checked at training time); its
    predictions carry the model id ``<bundle id>+int8``."""

    framework: ClassVar[str] = "onnx-int8"


class KerasInferenceOperator(BundleInferenceOperator):
    """Score with the bundle's Keras model (imports TensorFlow in the task)."""

    framework: ClassVar[str] = "keras"


class TFLiteInferenceOperator(BundleInferenceOperator):
    """Score with the bundle's TFLite model through TensorFlow's interpreter."""

    framework: ClassVar[str] = "tflite"
