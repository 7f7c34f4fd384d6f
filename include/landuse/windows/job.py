"""Score one large image with a sliding window, end to end: check, score, detect, write.

Every check that can fail on bad input (window and stride, the image, the bundle, the
classes to detect, GeoJSON for an image without georeferencing) runs before any window is
scored. Outputs go to one folder URL; ``summary.json`` is written last, so its presence
says the run completed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from landuse import storage
from landuse.models.bundle import Bundle, load_bundle
from landuse.windows.extract import DEFAULT_BATCH, DEFAULT_MIN_VALID, score_strip
from landuse.windows.fcn import FcnScorer, Route, choose_route
from landuse.windows.grid import (
    DEFAULT_SIZE,
    DEFAULT_STRIDE,
    MAX_STRIP_WINDOWS,
    WindowError,
    WindowGrid,
    check_window,
    plan_strips,
)
from landuse.windows.nms import DEFAULT_IOU, DEFAULT_THRESHOLD, check_detection_params, detect
from landuse.windows.outputs import require_crs, write_outputs
from landuse.windows.source import open_image

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowScores:
    """Every window's class probabilities over one image."""

    grid: WindowGrid
    probabilities: np.ndarray  # (rows, cols, classes) float32, NaN where not scored
    classes: tuple[str, ...]
    strip_seconds: list[float]
    seconds: float


def image_grid(image: str, size: int, stride: int) -> tuple[WindowGrid, Any, Any]:
    """The window grid over ``image`` and its CRS and transform (None when the image has
    no georeferencing), from the header only.

    Raises:
        WindowError: bad size or stride, or a window larger than the image.
        RasterError: the image cannot be opened or lacks 8-bit RGB bands.
    """
    check_window(size, stride)
    with open_image(image) as source:
        grid = WindowGrid(source.height, source.width, size, stride, name=f"image {image}")
        if not source.georeferenced:
            return grid, None, None
        return grid, source.crs, source.transform


def score_in_process(
    image: str,
    bundle: Bundle,
    grid: WindowGrid,
    *,
    framework: str = "onnx",
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
    min_valid: float = DEFAULT_MIN_VALID,
    max_strip_windows: int = MAX_STRIP_WINDOWS,
    route: Route | None = None,
) -> WindowScores:
    """Score every window in this process, strip by strip (bounded memory): through the
    fully convolutional model when ``route`` says so, else window by window (batched)."""
    from landuse.models.runners import open_runner

    started = time.perf_counter()
    fcn: FcnScorer | None = None
    if route is not None and route.fully_convolutional:
        fcn = FcnScorer(bundle, grid.size, grid.stride, threads=threads)
    else:
        options = {"threads": threads} if framework in ("onnx", "tflite") else {}
        runner = open_runner(bundle, framework, **options)
    out = np.empty((grid.count, len(bundle.spec.classes)), dtype=np.float32)
    seconds = []
    with open_image(image) as source:
        for strip in plan_strips(grid, 1, max_windows=max_strip_windows):
            t = time.perf_counter()
            if fcn is not None:
                probs = fcn.score_strip(source, grid, strip, min_valid=min_valid)
            else:
                probs = score_strip(source, grid, strip, runner, batch_size=batch_size,
                                    min_valid=min_valid)
            out[strip.start:strip.stop] = probs
            seconds.append(time.perf_counter() - t)
    return WindowScores(grid, out.reshape(grid.rows, grid.cols, -1), bundle.spec.classes,
                        seconds, time.perf_counter() - started)


def score_image(
    image: str,
    bundle: Bundle,
    grid: WindowGrid,
    *,
    spark: SparkSession | None = None,
    framework: str = "onnx",
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
    min_valid: float = DEFAULT_MIN_VALID,
    max_strip_windows: int = MAX_STRIP_WINDOWS,
    slots: int | None = None,
    route: Route | None = None,
) -> WindowScores:
    """Score every window, on Spark when a session is given, else in this process; through
    the fully convolutional model when ``route`` says so (None: per window)."""
    if spark is None:
        return score_in_process(image, bundle, grid, framework=framework,
                                batch_size=batch_size, threads=threads, min_valid=min_valid,
                                max_strip_windows=max_strip_windows, route=route)
    from landuse.windows.spark import score_strips_on_spark

    started = time.perf_counter()
    probs, seconds, _ = score_strips_on_spark(
        spark, image, bundle, grid, framework=framework, batch_size=batch_size,
        threads=threads, min_valid=min_valid, slots=slots, max_strip_windows=max_strip_windows,
        route=route)
    return WindowScores(grid, probs.reshape(grid.rows, grid.cols, -1), bundle.spec.classes,
                        seconds, time.perf_counter() - started)


def run_windows(
    image: str,
    bundle: str | Path,
    out: str,
    *,
    size: int = DEFAULT_SIZE,
    stride: int = DEFAULT_STRIDE,
    threshold: float = DEFAULT_THRESHOLD,
    iou_threshold: float = DEFAULT_IOU,
    detect_classes: Sequence[str] | None = None,
    merge: Literal["weighted", "max"] = "weighted",
    geojson: bool | None = None,
    spark: SparkSession | None = None,
    framework: str = "onnx",
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
    min_valid: float = DEFAULT_MIN_VALID,
    max_strip_windows: int = MAX_STRIP_WINDOWS,
    route: str = "auto",
) -> dict[str, Any]:
    """Score ``image`` with a sliding window and write the dense map and detections.

    Args:
        image: a GeoTIFF or plain image (local path or storage URL).
        bundle: the model bundle folder (any input size: windows are resized to it).
        out: output folder URL (local or ``abfs://``).
        size: window side in pixels (the seed: 32).
        stride: step between windows in pixels, at most ``size`` (the seed: 16).
        threshold: a window is a detection when its top class reaches this probability.
        iou_threshold: NMS merges same-class windows overlapping above this IoU.
        detect_classes: classes to detect (default: all of the model's).
        merge: ``"weighted"`` (score-weighted box) or ``"max"`` (classic NMS).
        geojson: write ``detections.geojson``; None = when the image is georeferenced, True
            = required (an image without a CRS is an error).
        spark: a Spark session to fan out on, or None to score in this process.
        framework: onnx, keras or tflite.
        batch_size: windows per model call.
        threads: inference threads (per Spark Python worker, or in this process).
        min_valid: windows with a smaller share of valid pixels are not scored.
        max_strip_windows: most windows in one strip (one Spark task).
        route: ``auto`` (the fully convolutional model when the network allows it, see
            :mod:`landuse.windows.fcn`, else per window), ``fully-convolutional`` (an error
            when it cannot) or ``per-window``. The summary says which was used and why.

    Returns:
        The summary also written to ``{out}/summary.json``.

    Raises:
        WindowError: bad window, stride, thresholds, classes or route; GeoJSON without a
            CRS; ``fully-convolutional`` asked for a network that cannot take it.
        RasterError: the image cannot be read.
        BundleError: the bundle is invalid.
    """
    started = time.perf_counter()
    check_window(size, stride)
    check_detection_params(threshold, iou_threshold, merge)
    if batch_size < 1 or not 0 <= min_valid <= 1:
        raise WindowError(f"batch_size must be positive and min_valid in [0, 1], got "
                          f"{batch_size} and {min_valid}")
    loaded = load_bundle(bundle)
    classes = loaded.spec.classes
    unknown = [c for c in detect_classes or () if c not in classes]
    if unknown:
        raise WindowError(f"cannot detect {unknown}: bundle {loaded.path} has classes "
                          f"{list(classes)}")
    grid, crs, transform = image_grid(image, size, stride)
    if geojson:
        require_crs(image, crs)
    write_geojson = crs is not None if geojson is None else geojson
    plan = choose_route(loaded, size, stride, framework=framework, requested=route)
    log.info("scoring %d windows (%d × %d, %d px every %d px) of %s with %s%s, %s (%s)",
             grid.count, grid.rows, grid.cols, size, stride, image, loaded.model_id,
             f" on {spark.sparkContext.master}" if spark is not None else " in process",
             plan.name, plan.reason)
    scores = score_image(image, loaded, grid, spark=spark, framework=framework,
                         batch_size=batch_size, threads=threads, min_valid=min_valid,
                         max_strip_windows=max_strip_windows, route=plan)
    detections = detect(scores.probabilities, grid, classes, threshold=threshold,
                        iou_threshold=iou_threshold, detect_classes=detect_classes, merge=merge)
    urls = write_outputs(out, scores.probabilities, grid, classes, detections, crs=crs,
                         transform=transform, geojson=write_geojson, image=image,
                         model_id=loaded.model_id)
    scored = ~np.isnan(scores.probabilities).any(axis=2)
    top = scores.probabilities[scored].argmax(axis=1) if scored.any() else np.array([], int)
    shares = {c: round(float((top == i).mean()), 4) if len(top) else 0.0
              for i, c in enumerate(classes)}
    summary: dict[str, Any] = {
        "image": image, "out": out, "outputs": urls, "model_id": loaded.model_id,
        "window_size": size, "stride": stride, "grid": [grid.rows, grid.cols],
        "windows": grid.count, "scored": int(scored.sum()), "strips": len(scores.strip_seconds),
        "strip_seconds": {"max": round(max(scores.strip_seconds), 3),
                          "mean": round(float(np.mean(scores.strip_seconds)), 3)},
        "scoring_seconds": round(scores.seconds, 3),
        "windows_per_second": round(grid.count / scores.seconds, 1) if scores.seconds else None,
        "spark_master": spark.sparkContext.master if spark is not None else None,
        "route": plan.name, "route_reason": plan.reason,
        "georeferenced": crs is not None, "crs": crs.to_string() if crs is not None else None,
        "class_shares": shares, "threshold": threshold, "iou_threshold": iou_threshold,
        "detections": len(detections),
        "detections_per_class": {str(k): int(v) for k, v in
                                 detections["class"].value_counts().sort_index().items()},
        "windows_merged": int(detections["windows"].sum()) if len(detections) else 0,
    }
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["outputs"]["summary.json"] = storage.join(out, "summary.json")
    storage.write_bytes(summary["outputs"]["summary.json"],
                        json.dumps(summary, indent=2).encode())
    log.info("%d windows scored, %d detections (%d windows merged); outputs in %s",
             summary["scored"], summary["detections"], summary["windows_merged"], out)
    return summary
