"""Scoring on Spark: the embarrassingly parallel heart of the pipeline.

The driver only plans: from each manifest it reads the scene column and makes tasks of up to
:data:`TILES_PER_TASK` neighbouring tiles of one scene (a manifest of chips, or a folder of
chips, is split into slices instead), then runs of consecutive tasks of about
:data:`TILES_PER_PARTITION` tiles become one Spark task each (at least
:data:`PARTITIONS_PER_CORE` per core, for an even finish). Each task reads its tiles' rows from
the manifest,
opens the scene once and reads every window with :func:`landuse.tiling.read_tile`, the read
that cut the training chips, scores them in batches through the bundle's preprocessing, and
writes its predictions itself, as one Parquet part per county-year under a staging prefix
named by the task (a retried or speculative attempt rewrites the same part, atomically).

The bundle travels to the workers with ``SparkContext.addArchive`` and is loaded once per
Python worker (cached by its ONNX hash), never per row; each worker runs one inference thread.

The driver collects one small summary per task (counts and a confusion count table), never a
tile or a prediction. After the job succeeded it commits each county-year as
``{out}/county={county}/year={year}/predictions.parquet``: the parts its tasks reported are
streamed, one at a time, into one file that replaces the old one atomically (local: rename;
blob: one upload), so a retried task or a rerun leaves exactly one row per tile and the
driver's memory does not grow with the county.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
import uuid
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from landuse import storage
from landuse.models.bundle import Bundle, load_bundle
from landuse.scoring.predict import (
    PREDICTION_SCHEMA,
    check_tiles_fit,
    is_manifest_source,
    is_scene_manifest,
    load_source,
    manifest_tile_px,
    score_chips,
    score_scene,
    scoreable,
    to_table,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
TILES_PER_TASK = 512
# Tiles per Spark task: with a cheap model every Spark task's round trip (scheduling, the
# worker's wait for its next task) cost about 7 % of a scene's scoring time.
TILES_PER_PARTITION = 2048
PARTITIONS_PER_CORE = 4
# Runners of this Python worker, by (unpacked bundle, framework): built once, reused.
_RUNNERS: dict[tuple[str, str], Any] = {}
# Manifests of this Python worker's recent jobs, indexed by scene (see task_rows).
_SCENE_INDEXES: OrderedDict[tuple[str, str], tuple[Any, dict[str | None, list[int]]]] = (
    OrderedDict())
_SCENE_INDEXES_KEPT = 4


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring job committed."""

    outputs: dict[tuple[str, int], str]  # (county, year) -> predictions URL
    tiles: int
    errors: int
    seconds: float
    report: dict[str, Any] | None
    model_id: str  # what the predictions carry (marked "+int8" for the int8 form)


@dataclass(frozen=True)
class Task:
    """One Spark task's tiles: slice ``part`` of ``parts`` of one scene's tiles in a manifest
    (``scene`` set), of a manifest's tiles without a scene (``scene`` None), or a list of chips
    (``urls``, for a folder source)."""

    manifest: str | None
    scene: str | None
    part: int
    parts: int
    tiles: int
    tile_px: int | None = None
    urls: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Names the task's staged parts: the same for every attempt of the task."""
        text = f"{self.manifest}|{self.scene}|{self.part}/{self.parts}|{self.urls}"
        return hashlib.sha256(text.encode()).hexdigest()[:20]


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
        options = {"threads": threads} if framework != "keras" else {}
        _RUNNERS[key] = open_runner(load_bundle(bundle_dir), framework, **options)
    return _RUNNERS[key]


def plan_tasks(source: str, tiles_per_task: int = TILES_PER_TASK) -> list[Task]:
    """The tasks that score ``source``, largest first, without loading its tiles: a
    manifest's scene column (dictionary-encoded) is all the driver reads of it.

    Raises:
        ValueError: nothing to score at ``source``.
    """
    import pyarrow.compute as pc

    tasks: list[Task] = []
    if is_manifest_source(source):
        for url in storage.glob(source) if "*" in source else [source]:
            schema = _manifest_schema(url)
            counts: dict[str | None, int] = {}
            tile_px = None
            if is_scene_manifest(schema):
                tile_px = manifest_tile_px(url, schema)
                table = _read_manifest(url, ["scene_url", "image_url", "status"])
                if "status" in table.column_names:  # tiles tiling found empty: nothing to read
                    empty = pc.fill_null(pc.equal(table["status"], "empty"), False)
                    table = table.filter(pc.invert(empty))
                scenes = table["scene_url"].combine_chunks()
                for item in pc.value_counts(scenes).to_pylist():
                    counts[item["values"]] = item["counts"]
                if scenes.null_count:  # rows without a scene: scored from their chips
                    counts[None] = scenes.null_count
            else:
                counts[None] = _manifest_rows(url)
            for scene, n in counts.items():
                parts = math.ceil(n / tiles_per_task)
                tasks += [Task(url, scene, i, parts, math.ceil(n / parts), tile_px)
                          for i in range(parts)]
    else:
        pattern = source if "*" in source else storage.join(source, "*.png")
        images = storage.glob(pattern)  # a folder of chips: the URLs are the plan
        tasks += [Task(None, None, 0, 1, len(chunk), None, tuple(chunk))
                  for chunk in (images[i:i + tiles_per_task]
                                for i in range(0, len(images), tiles_per_task))]
    tasks = [t for t in tasks if t.tiles]
    if not tasks:
        raise ValueError(f"nothing to score at {source}: no tiles with images")
    return sorted(tasks, key=lambda t: -t.tiles)


def default_partitions(tasks: list[Task], cores: int) -> int:
    """Spark tasks for ``tasks`` on ``cores`` cores: one per :data:`TILES_PER_PARTITION` tiles,
    at least :data:`PARTITIONS_PER_CORE` per core (so the last ones finish together)."""
    tiles = sum(t.tiles for t in tasks)
    return max(PARTITIONS_PER_CORE * max(cores, 1), math.ceil(tiles / TILES_PER_PARTITION))


def group_tasks(tasks: list[Task], partitions: int) -> list[list[Task]]:
    """``tasks`` cut into at most ``partitions`` runs of about equal tiles, largest first.

    Runs are consecutive in (manifest, scene) order, so a worker meets each manifest in few
    runs and its per-job manifest index (see :func:`task_rows`) is rarely rebuilt.
    """
    ordered = sorted(tasks, key=lambda t: (t.manifest or "", t.scene or "", t.part, t.urls))
    total = sum(t.tiles for t in ordered)
    groups: list[list[Task]] = []
    run: list[Task] = []
    done = 0
    for task in ordered:
        run.append(task)
        done += task.tiles
        if done * partitions >= total * (len(groups) + 1):
            groups.append(run)
            run = []
    if run:
        groups.append(run)
    return sorted(groups, key=lambda g: -sum(t.tiles for t in g))


def task_rows(task: Task, job: str | None = None) -> pd.DataFrame:
    """The rows of a task's tiles, read on the worker (neighbouring tiles of one scene).

    ``job`` (a job's staging URL) lets this Python worker keep the manifest, indexed by
    scene, for the job's other tasks: a county's tasks each want one scene's rows, and
    reading the whole manifest for every task would grow with the square of the county.
    """
    if task.urls:
        return pd.DataFrame({
            "tile_id": [u.rsplit("/", 1)[-1].rsplit(".", 1)[0] for u in task.urls],
            "image_url": list(task.urls),
        })
    assert task.manifest is not None
    schema = _manifest_schema(task.manifest)
    if is_scene_manifest(schema):
        import pyarrow as pa

        table, by_scene = _scene_index(task.manifest, job)
        positions = pa.array(by_scene.get(task.scene, []), type=pa.int64())
        rows = scoreable(table.take(positions).to_pandas())
        rows = rows.sort_values(["maxy", "minx", "tile_id"], ascending=[False, True, True])
    else:
        rows = scoreable(_read_manifest(task.manifest).to_pandas())
    bounds = [len(rows) * i // task.parts for i in range(task.parts + 1)]
    return rows.iloc[bounds[task.part]:bounds[task.part + 1]].reset_index(drop=True)


def _scene_index(manifest: str, job: str | None) -> tuple[Any, dict[str | None, list[int]]]:
    """A scene manifest and the row positions of each scene's tiles (``None``: tiles without
    a scene); kept per (manifest, job) in this worker, for the last few manifests."""
    key = (manifest, job or "")
    if job is not None and key in _SCENE_INDEXES:
        _SCENE_INDEXES.move_to_end(key)
        return _SCENE_INDEXES[key]
    table = _read_manifest(manifest)
    by_scene: dict[str | None, list[int]] = defaultdict(list)
    for position, scene in enumerate(table["scene_url"].to_pylist()):
        by_scene[scene].append(position)
    entry = (table, dict(by_scene))
    if job is not None:
        _SCENE_INDEXES[key] = entry
        while len(_SCENE_INDEXES) > _SCENE_INDEXES_KEPT:
            _SCENE_INDEXES.popitem(last=False)
    return entry


def score_task(task: Task, runner: Any, batch_size: int, staging: str) -> list[dict[str, Any]]:
    """Score one task's tiles and stage its predictions (one part per county-year);
    returns a summary per part: where it is, its counts and its confusion counts."""
    rows = task_rows(task, job=staging)
    if task.scene is not None:
        scored = score_scene(rows, runner, batch_size, task.tile_px)
    else:
        scored = score_chips(rows, runner, batch_size)
    classes = set(runner.bundle.spec.classes)
    keys = scored[["county", "year"]].fillna({"county": "unknown", "year": 0})
    summaries = []
    for (county, year), part in scored.groupby([keys["county"], keys["year"]], sort=True):
        url = storage.join(staging, f"county={storage.safe_name(str(county))}",
                           f"year={int(year)}", f"part-{task.key}.parquet")
        storage.write_parquet(url, to_table(part.sort_values("tile_id")))
        ok = part[part["error"].isna() & part["label"].isin(classes)]
        confusion = Counter(zip(ok["label"], ok["predicted"], strict=True))
        summaries.append({"county": str(county), "year": int(year), "url": url,
                          "tiles": len(part), "errors": int(part["error"].notna().sum()),
                          "confusion": dict(confusion)})
    return summaries


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
    """Score every tile of ``source`` (manifest(s) or chips) with ``bundle`` on Spark.

    Args:
        spark: the session (``local[N]`` or a ``spark://`` cluster).
        source: a manifest, a glob of manifests, or a folder / glob of chips (PNG).
        bundle: bundle folder or URL (e.g. the champion's ``abfs://`` URL): fetched to the
            driver's bundle cache, then shipped to the workers by Spark as an archive.
        out: storage root of the predictions (local or ``abfs://``); the workers write there.
        framework: runner to use on the workers (onnx, onnx-int8, keras, tflite).
        batch_size: tiles per model call.
        threads: inference threads per Python worker.
        partitions: the number of Spark tasks to aim for: scenes are cut into smaller tasks
            when they give fewer, tasks are grouped when they give more (default: one per
            :data:`TILES_PER_PARTITION` tiles, at least :data:`PARTITIONS_PER_CORE` per core
            of the context).

    Raises:
        ValueError: nothing to score, tiles that do not fit the bundle, or an invalid bundle.
    """
    from pyspark import SparkFiles

    from landuse.models.runners import predictions_model_id

    started = time.perf_counter()
    checked: Bundle = load_bundle(bundle)  # fail on the driver, not on every worker
    model_id = predictions_model_id(checked, framework)  # a missing model form fails here too
    tasks = plan_tasks(source)
    if partitions and len(tasks) < partitions:  # fewer scenes than asked: smaller tasks
        total = sum(t.tiles for t in tasks)
        tasks = plan_tasks(source, max(1, math.ceil(total / partitions)))
    _check_fit(tasks, checked)
    sc = spark.sparkContext
    groups = group_tasks(tasks, partitions or default_partitions(tasks, sc.defaultParallelism))
    name = ship_bundle(sc, checked)
    staging = storage.join(out, "_staging", uuid.uuid4().hex)  # this run's parts only

    def score_partition(part: Iterable[list[Task]]) -> Iterator[dict[str, Any]]:
        runner = worker_runner(SparkFiles.get(name), framework, threads)
        for group in part:
            for task in group:
                yield from score_task(task, runner, batch_size, staging)

    try:
        summaries = (sc.parallelize(groups, len(groups)).mapPartitions(score_partition)
                     .collect())
        outputs = _commit(summaries, out)
    finally:
        remove_prefix(staging)
    tiles = sum(s["tiles"] for s in summaries)
    errors = sum(s["errors"] for s in summaries)
    report = _report(summaries, list(checked.spec.classes))
    seconds = time.perf_counter() - started
    log.info("scored %d tiles (%d errors) in %d Spark tasks (%d scene tasks) in %.1f s on %s",
             tiles, errors, len(groups), len(tasks), seconds, sc.master)
    return ScoreResult(outputs, tiles, errors, seconds, report, model_id)


def ship_bundle(sc: Any, bundle: Bundle) -> str:
    """Send the bundle to every executor as a zip archive (unpacked there by Spark; cluster
    mode cannot ship folders). Named by content, so a bundle ships once per context; stored
    uncompressed, since weights barely compress."""
    import zipfile

    # bundle.json too: the int8 form is added beside an unchanged model.onnx
    digest = hashlib.sha256((Path(bundle.path) / "bundle.json").read_bytes())
    digest.update(bundle.onnx_sha256.encode())
    name = f"bundle-{digest.hexdigest()[:16]}.zip"
    if name in {Path(f).name for f in sc.listArchives}:
        return name
    archive = Path(tempfile.mkdtemp(prefix="landuse-bundle-")) / name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(Path(bundle.path).iterdir()):
            zf.write(path, path.name)
    sc.addArchive(str(archive))
    return name


def _check_fit(tasks: list[Task], bundle: Bundle) -> None:
    """Refuse tiles of another size than the bundle's: by the manifests' recorded tile size,
    and by a few chips of the first task that has chips."""
    sizes = {t.tile_px for t in tasks if t.tile_px is not None}
    probe = pd.DataFrame({"tile_px": sorted(sizes), "image_url": [None] * len(sizes)})
    check_tiles_fit(probe, str(bundle.path), bundle.spec.preprocessing)
    chips = next((t for t in tasks if t.scene is None), None)
    if chips is not None:
        rows = (task_rows(chips) if chips.urls
                else load_source(chips.manifest or "").head(5))
        check_tiles_fit(rows, str(bundle.path), bundle.spec.preprocessing)


def _commit(summaries: list[dict[str, Any]], out: str) -> dict[tuple[str, int], str]:
    """Each county-year's staged parts, merged into one file committed atomically."""
    parts: dict[tuple[str, int], list[str]] = defaultdict(list)
    for s in summaries:
        parts[(s["county"], s["year"])].append(s["url"])
    outputs = {}
    for (county, year), urls in sorted(parts.items()):
        url = predictions_url(out, county, year)
        merge_parts(sorted(set(urls)), url)  # set: a part is named by its task, read once
        outputs[(county, year)] = url
    return outputs


def merge_parts(parts: list[str], url: str, schema: Any = PREDICTION_SCHEMA) -> None:
    """Stream ``parts`` into one Parquet file of ``schema`` at ``url``, one part in memory at
    a time; the file appears whole or not at all (local: rename; blob: one upload of a local
    file)."""
    import pyarrow.parquet as pq
    from fsspec.implementations.local import LocalFileSystem

    fs, path = storage.filesystem(url)
    local = isinstance(fs, LocalFileSystem)
    folder = os.path.dirname(path) if local else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for part in parts:
                writer.write_table(storage.read_parquet(part).cast(schema))
        if local:
            os.chmod(tmp, 0o644)  # mkstemp makes files private; predictions are shared data
            os.replace(tmp, path)
        else:
            storage.with_retries(f"cannot write {url}", lambda: fs.put_file(tmp, path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_prefix(prefix: str) -> None:
    """Delete a run's staging prefix (best effort: leftovers are never read again)."""
    fs, path = storage.filesystem(prefix)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception as err:  # debris, not a failed job
        log.warning("could not remove staging %s: %s", prefix, err)


def _report(summaries: list[dict[str, Any]], classes: list[str]) -> dict[str, Any] | None:
    """The accuracy report from the tasks' confusion counts (labelled, scored tiles)."""
    from landuse.models.metrics import report

    counts: Counter[tuple[str, str]] = Counter()
    for s in summaries:
        counts.update(s["confusion"])
    if not counts:
        return None
    truth = [t for (t, _), n in counts.items() for _ in range(n)]
    predicted = [p for (_, p), n in counts.items() for _ in range(n)]
    return report(truth, predicted, classes)


def _manifest_schema(url: str) -> Any:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    return storage.with_retries(f"cannot read {url}", lambda: pq.read_schema(path, filesystem=fs))


def _manifest_rows(url: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    return int(storage.with_retries(
        f"cannot read {url}", lambda: pq.ParquetFile(path, filesystem=fs).metadata.num_rows))


def _read_manifest(url: str, columns: list[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    if columns is not None:
        columns = [c for c in columns if c in _manifest_schema(url).names]
    return storage.with_retries(
        f"cannot read {url}",
        lambda: pq.read_table(path, columns=columns, filesystem=fs,
                              read_dictionary=["scene_url"] if columns else None))
