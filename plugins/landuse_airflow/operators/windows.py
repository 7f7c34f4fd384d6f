"""Sliding-window scoring of one large image: a dense land-use map and merged detections.

The operator runs :func:`landuse.windows.job.run_windows`: windows of ``window_size`` px
every ``stride`` px, read in equal-work strips, one Spark task per strip on
``spark_master`` (``local[N]`` or ``spark://host:port``), or in the task's own process when
``spark_master`` is ``None``/``"none"``::

    SlidingWindowScoringOperator(task_id="windows", image_url="{{ params.image }}",
                                 bundle_path="/models/champion", output_url="/out/windows/x")

Bad input (a window larger than the image, a stride of 0 or larger than the window,
GeoJSON asked for an image without georeferencing, an unknown class, a broken bundle or
image) fails the task at once, without retries; ``on_kill`` cancels the Spark job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.params import rendered_number

if TYPE_CHECKING:
    from airflow.sdk import Context


class SlidingWindowScoringOperator(BaseOperator):
    """Score a large image with a sliding window through a model bundle.

    Args:
        image_url: GeoTIFF or plain image, local or ``abfs://`` (templated).
        bundle_path: the bundle folder, on local disk (templated).
        output_url: output folder, local or ``abfs://`` (templated).
        window_size: window side in px (templated; the seed: 32).
        stride: step between windows in px, 1 to ``window_size`` (templated; the seed: 16).
        threshold: detection probability threshold (templated; the seed: 0.9).
        iou_threshold: NMS merges same-class windows overlapping above this IoU (templated).
        detect_classes: classes to detect, a list or a comma-separated string; None or
            empty = all (templated).
        merge: ``"weighted"`` (score-weighted box) or ``"max"`` (classic NMS) (templated).
        geojson: ``"auto"`` (when georeferenced), ``"yes"`` (required) or ``"no"`` (templated).
        spark_master: ``local[N]``, ``spark://host:port``, or None / ``"none"`` to score in
            this task's process (templated).
        framework: onnx, keras or tflite.
        route: ``"auto"`` (fully convolutional when the network allows it, else per
            window), ``"fully-convolutional"`` (fails at once when it cannot) or
            ``"per-window"`` (templated); see :mod:`landuse.windows.fcn`.
        batch_size: windows per model call (templated).
        threads: inference threads per Spark Python worker (or in process).

    Returns (XCom): the run's summary: ``outputs`` (name -> URL of probabilities.tif,
    classes.tif, detections.parquet, detections.geojson, summary.json), ``windows``,
    ``scored``, ``strips``, ``detections``, ``class_shares``, ``georeferenced``, ``crs``,
    ``model_id``, ``route`` and ``route_reason`` (how the windows were scored, and why),
    timings.
    """

    template_fields: Sequence[str] = (
        "image_url", "bundle_path", "output_url", "window_size", "stride", "threshold",
        "iou_threshold", "detect_classes", "merge", "geojson", "spark_master", "batch_size",
        "route",
    )
    ui_color = "#dae8fc"

    def __init__(
        self,
        *,
        image_url: str,
        bundle_path: str,
        output_url: str,
        window_size: int | str = 32,
        stride: int | str = 16,
        threshold: float | str = 0.9,
        iou_threshold: float | str = 0.1,
        detect_classes: Sequence[str] | str | None = None,
        merge: str = "weighted",
        geojson: str = "auto",
        spark_master: str | None = "local[2]",
        framework: str = "onnx",
        route: str = "auto",
        batch_size: int | str = 64,
        threads: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_url = image_url
        self.bundle_path = bundle_path
        self.output_url = output_url
        self.window_size = window_size
        self.stride = stride
        self.threshold = threshold
        self.iou_threshold = iou_threshold
        self.detect_classes = detect_classes
        self.merge = merge
        self.geojson = geojson
        self.spark_master = spark_master
        self.framework = framework
        self.route = route
        self.batch_size = batch_size
        self.threads = threads
        self._spark: Any = None

    def _settings(self) -> dict[str, Any]:
        """The rendered settings, typed; ValueError (fail fast) when one is not usable."""
        geojson = {"auto": None, "yes": True, "no": False, True: True, False: False,
                   None: None}
        if self.geojson not in geojson:
            raise ValueError(f"geojson must be 'auto', 'yes' or 'no', got {self.geojson!r}")
        detect = self.detect_classes
        if isinstance(detect, str):  # a rendered template: comma-separated names
            detect = [name.strip() for name in detect.split(",") if name.strip()]
        return {
            "size": rendered_number(self.window_size, int, "window_size"),
            "stride": rendered_number(self.stride, int, "stride"),
            "threshold": rendered_number(self.threshold, float, "threshold"),
            "iou_threshold": rendered_number(self.iou_threshold, float, "iou_threshold"),
            "batch_size": rendered_number(self.batch_size, int, "batch_size"),
            "detect_classes": list(detect) if detect else None,
            "merge": self.merge,
            "geojson": geojson[self.geojson],
            "route": self.route,
        }

    def execute(self, context: Context) -> dict[str, Any]:
        """Check the input, score every window (on Spark or here), write the outputs."""
        from landuse.windows.job import run_windows

        with fail_fast_on_bad_input():  # a bad window or image will not heal on retry
            settings = self._settings()
            master = self.spark_master if self.spark_master not in (None, "", "none") else None
            if master is not None:
                from landuse.spark import local_spark

                self._spark = local_spark(f"landuse-windows-{self.task_id}", master=str(master))
            self.log.info("sliding windows over %s with %s -> %s (%s)", self.image_url,
                          self.bundle_path, self.output_url, master or "in process")
            summary = run_windows(self.image_url, self.bundle_path, self.output_url,
                                  spark=self._spark, framework=self.framework,
                                  threads=self.threads, **settings)
        self.log.info("%d windows in %d strips, %.1f windows/s, %s (%s); %d detections; "
                      "map %s", summary["windows"], summary["strips"],
                      summary["windows_per_second"] or 0.0, summary["route"],
                      summary["route_reason"], summary["detections"],
                      summary["outputs"]["probabilities.tif"])
        return summary

    def on_kill(self) -> None:
        """Cancel the running Spark job (nothing is written: outputs come after scoring)."""
        if self._spark is not None:
            from landuse.windows.spark import cancel

            cancel(self._spark)
            self.log.warning("cancelled the sliding-window Spark job of %s", self.task_id)
