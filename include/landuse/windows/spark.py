"""Sliding-window scoring on Spark: one task per equal-work strip.

The driver reads only the image's header: it plans strips of equal window counts, a
multiple of the task slots in number (:func:`~landuse.windows.grid.plan_strips`), and makes
an RDD with exactly one strip per partition. Each task opens the image itself by its URL
(local path, or ``abfs://`` through GDAL's ``/vsiaz/``), reads only its strip's rows, and
scores its windows through the bundle's runner, which is loaded once per Python worker with
one inference thread (the same cache as :mod:`landuse.scoring.spark`). The driver collects
each strip's probabilities and checks that every window came back exactly once.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from landuse.models.bundle import Bundle
from landuse.windows.extract import DEFAULT_BATCH, DEFAULT_MIN_VALID
from landuse.windows.fcn import Route
from landuse.windows.grid import MAX_STRIP_WINDOWS, Strip, WindowGrid, plan_strips

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
JOB_TAG = "landuse-windows"


def task_slots(sc: Any) -> int:
    """Tasks the cluster runs at once: N for ``local[N]`` (all cores for ``local[*]``), else
    Spark's default parallelism (the executors' total cores unless configured)."""
    found = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", str(sc.master))
    if found:
        count = found.group(1) or "1"
        return (os.cpu_count() or 1) if count == "*" else int(count)
    return max(1, int(sc.defaultParallelism))


def score_strips_on_spark(
    spark: SparkSession,
    image: str,
    bundle: Bundle,
    grid: WindowGrid,
    *,
    framework: str = "onnx",
    batch_size: int = DEFAULT_BATCH,
    threads: int = 1,
    min_valid: float = DEFAULT_MIN_VALID,
    slots: int | None = None,
    max_strip_windows: int = MAX_STRIP_WINDOWS,
    route: Route | None = None,
) -> tuple[np.ndarray, list[float], list[Strip]]:
    """Score every window of ``image`` on Spark, one task per strip.

    Args:
        spark: the session (``local[N]`` or a cluster).
        image: the image URL; every executor must be able to read it.
        bundle: the loaded bundle (shipped to the executors once per context).
        grid: the window grid over the image.
        framework: runner on the executors (onnx, keras, tflite).
        batch_size: windows per model call.
        threads: inference threads per Python worker.
        min_valid: windows with less valid data are not scored (NaN).
        slots: parallel task slots to plan equal strips for (default: :func:`task_slots`).
        max_strip_windows: most windows one task holds.
        route: fully convolutional (see :mod:`landuse.windows.fcn`) or, when None or
            ``per-window``, each window through the bundle's runner.

    Returns:
        The (count, classes) probabilities in grid order, each strip's scoring seconds, and
        the strips.
    """
    from pyspark import SparkFiles

    from landuse.scoring.spark import ship_bundle, worker_runner
    from landuse.windows.extract import score_strip
    from landuse.windows.fcn import worker_scorer
    from landuse.windows.source import open_image

    sc = spark.sparkContext
    strips = plan_strips(grid, slots or task_slots(sc), max_windows=max_strip_windows)
    name = ship_bundle(sc, bundle)  # carries the fully convolutional model once derived
    url = image if "://" in image else os.path.abspath(image)
    fcn = route is not None and route.fully_convolutional

    def score_partition(items: Iterable[Strip]) -> Iterator[tuple[int, int, np.ndarray, float]]:
        todo = list(items)
        if not todo:
            return
        if fcn:
            scorer = worker_scorer(SparkFiles.get(name), grid.size, grid.stride, threads)
        else:
            runner = worker_runner(SparkFiles.get(name), framework, threads)
        with open_image(url) as source:
            for item in todo:
                started = time.perf_counter()
                if fcn:
                    probs = scorer.score_strip(source, grid, item, min_valid=min_valid)
                else:
                    probs = score_strip(source, grid, item, runner, batch_size=batch_size,
                                        min_valid=min_valid)
                yield item.index, item.start, probs, time.perf_counter() - started

    sc.addJobTag(JOB_TAG)  # so that cancel() (an operator's on_kill) can find the job
    sc.setJobDescription(f"sliding windows over {image}: {len(strips)} strips")
    try:
        parts = sc.parallelize(strips, len(strips)).mapPartitions(score_partition).collect()
    finally:
        sc.removeJobTag(JOB_TAG)
    probabilities = np.full((grid.count, len(bundle.spec.classes)), np.nan, dtype=np.float32)
    seconds = [0.0] * len(strips)
    seen = np.zeros(grid.count, dtype=np.int32)
    for index, start, probs, took in parts:
        probabilities[start:start + len(probs)] = probs
        seen[start:start + len(probs)] += 1
        seconds[index] = took
    if not (seen == 1).all():  # a lost or doubled strip would silently corrupt the map
        raise RuntimeError(f"strips covered {int((seen == 0).sum())} windows never and "
                           f"{int((seen > 1).sum())} twice")
    log.info("scored %d windows in %d strips on %s (slowest strip %.2f s, mean %.2f s)",
             grid.count, len(strips), sc.master, max(seconds), sum(seconds) / len(seconds))
    return probabilities, seconds, strips


def cancel(spark: SparkSession | None = None) -> None:
    """Cancel running sliding-window jobs (from an operator's ``on_kill``)."""
    from pyspark import SparkContext

    sc = spark.sparkContext if spark is not None else SparkContext._active_spark_context
    if sc is not None:
        sc.cancelJobsWithTag(JOB_TAG)
