"""Scoring on Spark: the embarrassingly parallel heart of the pipeline.

Tiles are spread over partitions sized by work; each partition is scored with
``mapInPandas`` (Arrow batches) through :func:`~landuse.scoring.predict.score_frame`, the
same loop in-process scoring uses. The bundle travels to the workers with
``SparkContext.addArchive`` and is loaded once per Python worker (cached by its ONNX hash),
never per row; each worker runs one inference thread.

Each county-year is committed as one Parquet file,
``{out}/county={county}/year={year}/predictions.parquet``, written atomically after the
whole job succeeded: a retried task or a rerun leaves exactly one row per tile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from landuse import storage
from landuse.models.bundle import Bundle, load_bundle
from landuse.scoring.predict import (
    PREDICTION_SCHEMA,
    accuracy_report,
    check_tiles_fit,
    load_source,
    score_frame,
    to_table,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
TILES_PER_PARTITION = 256
# Runners of this Python worker, by (unpacked bundle, framework): built once, reused.
_RUNNERS: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring job committed."""

    outputs: dict[tuple[str, int], str]  # (county, year) -> predictions URL
    tiles: int
    errors: int
    seconds: float
    report: dict[str, Any] | None


def predictions_url(out: str, county: str, year: int) -> str:
    """Where one county-year's predictions are committed."""
    return storage.join(out, f"county={storage.safe_name(county)}", f"year={year}",
                        "predictions.parquet")


def worker_runner(bundle_dir: str, framework: str, threads: int) -> Any:
    """This worker's runner; the unpacked archive's folder is named by content, so the
    folder is a safe cache key (no reload or re-hash per partition)."""
    from landuse.models.runners import open_runner

    key = (bundle_dir, framework)
    if key not in _RUNNERS:
        options = {"threads": threads} if framework in ("onnx", "tflite") else {}
        _RUNNERS[key] = open_runner(load_bundle(bundle_dir), framework, **options)
    return _RUNNERS[key]


def score_on_spark(
    spark: SparkSession,
    source: str,
    bundle: str | Path,
    out: str,
    *,
    framework: str = "onnx",
    batch_size: int = 32,
    threads: int = 1,
    partitions: int | None = None,
) -> ScoreResult:
    """Score every tile of ``source`` (manifest(s) or images) with ``bundle`` on Spark.

    Args:
        spark: the session (``local[N]`` or a ``spark://`` cluster).
        source: a manifest, a glob of manifests, or a folder / glob of images.
        bundle: bundle folder or URL (e.g. the champion's ``abfs://`` URL): fetched to the
            driver's bundle cache, then shipped to the workers by Spark as an archive.
        out: storage root of the predictions (local or ``abfs://``).
        framework: runner to use on the workers (onnx, keras, tflite).
        batch_size: tiles per model call.
        threads: inference threads per Python worker.
        partitions: override the work-sized partition count.

    Raises:
        ValueError: nothing to score, or the bundle is invalid.
    """
    from pyspark import SparkFiles

    started = time.perf_counter()
    checked: Bundle = load_bundle(bundle)  # fail on the driver, not on every worker
    rows = load_source(source)
    check_tiles_fit(rows, str(checked.path), checked.spec.preprocessing)
    sc = spark.sparkContext
    name = ship_bundle(sc, checked)
    n_parts = partitions or max(sc.defaultParallelism, math.ceil(len(rows) / TILES_PER_PARTITION))
    frame = spark.createDataFrame(rows.astype({"year": "Int32"})).repartition(n_parts)
    schema = _spark_schema()

    def score_partitions(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        runner = worker_runner(SparkFiles.get(name), framework, threads)
        for batch in batches:
            yield score_frame(batch, runner, batch_size)

    scored: pd.DataFrame = frame.mapInPandas(score_partitions, schema=schema).toPandas()
    outputs = _commit(scored, out)
    errors = int(scored["error"].notna().sum())
    report = accuracy_report(scored, list(checked.spec.classes))
    seconds = time.perf_counter() - started
    log.info("scored %d tiles (%d errors) in %.1f s on %s", len(scored), errors, seconds,
             sc.master)
    return ScoreResult(outputs, len(scored), errors, seconds, report)


def ship_bundle(sc: Any, bundle: Bundle) -> str:
    """Send the bundle to every executor as a zip archive (unpacked there by Spark; cluster
    mode cannot ship folders). Named by content, so a bundle ships once per context; stored
    uncompressed, since weights barely compress."""
    import tempfile
    import zipfile

    name = f"bundle-{bundle.onnx_sha256[:16]}.zip"
    if name in {Path(f).name for f in sc.listArchives}:
        return name
    archive = Path(tempfile.mkdtemp(prefix="landuse-bundle-")) / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(Path(bundle.path).iterdir()):
            zf.write(path, path.name)
    sc.addArchive(str(archive))
    return name


def _spark_schema() -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(PREDICTION_SCHEMA)


def _commit(scored: pd.DataFrame, out: str) -> dict[tuple[str, int], str]:
    """One atomic Parquet file per county-year, rows sorted by tile id (one row per tile)."""
    outputs = {}
    scored = scored.drop_duplicates("image_url")  # a speculative task's twin cannot double a tile
    keys = scored[["county", "year"]].fillna({"county": "unknown", "year": 0})
    for (county, year), part in scored.groupby([keys["county"], keys["year"]], sort=True):
        url = predictions_url(out, str(county), int(year))
        storage.write_parquet(url, to_table(part.sort_values("tile_id")))
        outputs[(str(county), int(year))] = url
    return outputs
