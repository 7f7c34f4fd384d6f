"""Per-tile change features of a county-year: computed once, reused by every pair of years.

For each tile of a manifest: the backbone's pooled features (SqueezeNet with its shipped
ImageNet weights, run as ONNX) and the raw pixel statistics that the no-change test compares
(:data:`landuse.change.normalise.RAW_STATISTICS`). Both come from one read of the tile's
4-band window with :func:`landuse.tiling.read_tile`, the read that scoring and training use.

Where the features are computed does not change them: in the task's process for a small
county, or on Spark for a large one (tasks of neighbouring tiles of one scene, planned and
grouped as scoring's are, each scene opened once, parts written by the executors and merged by
the driver). They are committed at :func:`features_url` with the SHA-256 of the manifest and
of the backbone they came from, and reused while both are unchanged; the driver keeps only a
few hundred numbers per tile. A tile whose window cannot be read is an error row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from landuse import storage
from landuse.change.normalise import RAW_STATISTICS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from landuse.models.preprocessing import PreprocessSpec

log = logging.getLogger(__name__)
BACKBONE = "squeezenet"
BANDS = ("red", "green", "blue", "nir")
SCHEMA = pa.schema([
    ("tile_id", pa.string()),
    ("embedding", pa.list_(pa.float32())),
    *[(name, pa.float64()) for name in RAW_STATISTICS],
    ("error", pa.string()),
])
KEY = b"landuse.change.features"
# ONNX sessions of this process (driver or Python worker), by model path: built once.
_SESSIONS: dict[str, Any] = {}


def features_url(root: str, county: str, year: int, backbone: str = BACKBONE) -> str:
    """Where one county-year's change features are committed."""
    return storage.join(root, "features", f"county={storage.safe_name(county)}",
                        f"year={year}", f"backbone={backbone}", "features.parquet")


def backbone_model(backbone: str = BACKBONE, cache: str | Path | None = None
                   ) -> tuple[Path, PreprocessSpec]:
    """The backbone as ONNX (input ``image``, output pooled ``features``) and its
    preprocessing, exported once per machine into ``cache`` (default
    ``$LANDUSE_CACHE`` or ``~/.cache/landuse``) and checked against Keras when exported."""
    from landuse.models.backbone_onnx import export_backbone_onnx
    from landuse.models.preprocessing import PreprocessSpec

    folder = Path(cache or os.environ.get("LANDUSE_CACHE")
                  or Path.home() / ".cache" / "landuse") / "backbones"
    model, spec_file = folder / f"{backbone}.onnx", folder / f"{backbone}.json"
    if not (model.exists() and spec_file.exists()):
        _, spec = export_backbone_onnx(backbone, model)
        tmp = spec_file.with_name(f".{spec_file.name}.tmp-{os.getpid()}")
        tmp.write_text(spec.model_dump_json())
        os.replace(tmp, spec_file)
    return model, PreprocessSpec.model_validate_json(spec_file.read_text())


def scene_features(rows: pd.DataFrame, model: str | Path, spec: PreprocessSpec,
                   tile_px: int | None = None, batch_size: int = 32) -> pd.DataFrame:
    """Features of tiles of one scene (manifest rows with ``scene_url`` and bounds), as a
    frame of :data:`SCHEMA`. The scene is opened once and read in raster order; each tile is
    read at ``tile_px`` (default: the backbone's input) and resized to the input as a chip
    of that size would be; the statistics are NaN for a scene without NIR (3-band NAIP). A
    tile or scene that cannot be read gives error rows.

    Raises:
        ValueError: the rows span more than one scene.
        StorageUnavailable: storage stayed unreachable through the retries.
    """
    from PIL import Image

    from landuse.models.backbone_onnx import FEATURES, INPUT
    from landuse.models.preprocessing import to_tensor
    from landuse.raster import RasterError, open_raster
    from landuse.tiling import read_tile

    scenes = rows["scene_url"].unique()
    if len(scenes) > 1:
        raise ValueError(f"scene_features takes the tiles of one scene, got {len(scenes)}")
    size, cut = spec.input_size, tile_px or spec.input_size
    ordered = rows.sort_values(["maxy", "minx"], ascending=[False, True])
    stats = np.full((len(ordered), len(RAW_STATISTICS)), np.nan)
    rgb = np.zeros((len(ordered), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = [None] * len(ordered)
    if len(ordered):
        url = str(scenes[0])
        try:
            with open_raster(url) as src:
                bands = BANDS if src.count >= len(BANDS) else BANDS[:3]  # no NIR: no stats
                for i, row in enumerate(ordered.itertuples()):
                    try:
                        px = read_tile(src, url, (row.minx, row.miny, row.maxx, row.maxy),
                                       bands, cut)
                    except RasterError as err:
                        errors[i] = f"tile {row.tile_id}: {err}"
                        continue
                    if len(bands) == len(BANDS):
                        stats[i] = pixel_statistics(px)
                    chip = np.ascontiguousarray(px[:3].transpose(1, 2, 0))
                    rgb[i] = chip if cut == size else np.asarray(Image.fromarray(chip).resize(
                        (size, size), Image.Resampling.BILINEAR))
        except storage.StorageUnavailable:
            raise
        except (RasterError, OSError) as err:  # the scene itself: every tile is an error row
            errors = [f"scene {url}: {err}"] * len(ordered)
    ok = np.array([e is None for e in errors], dtype=bool)
    embedding: list[list[float] | None] = [None] * len(ordered)
    if ok.any():
        session = _session(str(model))
        good = rgb[ok]
        out = np.concatenate([
            session.run([FEATURES], {INPUT: to_tensor(good[i:i + batch_size], spec)})[0]
            for i in range(0, len(good), batch_size)])
        for position, row in zip(np.flatnonzero(ok).tolist(), out, strict=True):
            embedding[position] = row.tolist()
    frame = pd.DataFrame({"tile_id": ordered["tile_id"].astype(str).to_numpy(),
                          "embedding": pd.Series(embedding, dtype=object).to_numpy()})
    for k, name in enumerate(RAW_STATISTICS):
        frame[name] = stats[:, k]
    frame["error"] = errors
    return frame


def pixel_statistics(pixels: np.ndarray) -> np.ndarray:
    """Each band's mean and standard deviation over the valid pixels of a ``(4, H, W)``
    tile (a pixel zero in every band is outside the scene), in :data:`RAW_STATISTICS`
    order; NaN when no pixel is valid."""
    px = np.asarray(pixels, dtype=np.float64)
    valid = px.any(axis=0)
    if not valid.any():
        return np.full(len(RAW_STATISTICS), np.nan)
    return np.concatenate([px[:, valid].mean(axis=1), px[:, valid].std(axis=1)])


def _session(model: str) -> Any:
    from landuse.models.backbone_onnx import onnx_session

    if model not in _SESSIONS:
        _SESSIONS[model] = onnx_session(model, threads=1)
    return _SESSIONS[model]


def county_year_features(root: str, county: str, year: int, *,
                         spark: SparkSession | None = None, backbone: str = BACKBONE,
                         batch_size: int = 32) -> pd.DataFrame:
    """A county-year's change features (by ``tile_id``), computed and committed once.

    Reused as committed while the manifest and the backbone are unchanged; otherwise
    computed in this process, or on ``spark`` when given, and committed atomically.

    Raises:
        ChangeInputError: the county-year has no manifest.
        StorageUnavailable: storage stayed unreachable through the retries.
    """
    from landuse.change.detect import read_manifest
    from landuse.scoring.predict import manifest_tile_px, scoreable
    from landuse.tiling import manifest_url

    manifest = manifest_url(root, county, year)
    read_manifest(root, county, year)  # a missing year fails here, with its name
    model, spec = backbone_model(backbone)
    key = {"manifest_sha256": hashlib.sha256(storage.read_bytes(manifest)).hexdigest(),
           "backbone": backbone,
           "backbone_sha256": hashlib.sha256(model.read_bytes()).hexdigest()}
    url = features_url(root, county, year, backbone)
    committed = _committed(url, key)
    if committed is not None:
        return committed
    if spark is not None:
        _on_spark(spark, manifest, model, spec, url, key, batch_size)
    else:
        rows = scoreable(storage.read_parquet(manifest).to_pandas())
        rows = rows[rows["scene_url"].notna()] if "scene_url" in rows else rows.iloc[:0]
        tile_px = manifest_tile_px(manifest)
        parts = [scene_features(group, model, spec, tile_px, batch_size)
                 for _, group in rows.groupby("scene_url", sort=True)]
        frame = pd.concat(parts, ignore_index=True) if parts else _empty()
        storage.write_parquet(url, _table(frame, key))
    log.info("change features of %s %d committed at %s", county, year, url)
    result = _committed(url, key)
    assert result is not None
    return result


def _committed(url: str, key: dict[str, str]) -> pd.DataFrame | None:
    """The committed features at ``url`` when they were made from ``key``'s inputs."""
    import pyarrow.parquet as pq

    if not storage.exists(url):
        return None
    fs, path = storage.filesystem(url)
    schema = storage.with_retries(f"cannot read {url}",
                                  lambda: pq.read_schema(path, filesystem=fs))
    if json.loads((schema.metadata or {}).get(KEY, b"{}")) != key:
        return None
    return storage.read_parquet(url).to_pandas().set_index("tile_id")


def _empty() -> pd.DataFrame:
    return SCHEMA.empty_table().to_pandas()


def _table(frame: pd.DataFrame, key: dict[str, str]) -> pa.Table:
    schema = SCHEMA.with_metadata({KEY: json.dumps(key, sort_keys=True).encode()})
    return pa.Table.from_pandas(frame[SCHEMA.names], schema=schema, preserve_index=False)


def _on_spark(spark: SparkSession, manifest: str, model: Path, spec: PreprocessSpec,
              url: str, key: dict[str, str], batch_size: int) -> None:
    """Features of every tile of ``manifest`` computed by Spark's executors, each writing
    its tasks' parts; the driver merges them into one committed file."""
    from pyspark import SparkFiles

    from landuse.scoring.spark import (
        Task,
        default_partitions,
        group_tasks,
        merge_parts,
        plan_tasks,
        remove_prefix,
        task_rows,
    )

    tasks = [t for t in plan_tasks(manifest) if t.scene is not None]
    sc = spark.sparkContext
    name = f"{model.stem}-{key['backbone_sha256'][:16]}.onnx"
    if name not in {Path(f).name for f in sc.listFiles}:
        shipped = Path(model).with_name(name)
        if not shipped.exists():
            shipped.write_bytes(model.read_bytes())
        sc.addFile(str(shipped))
    staging = storage.join(os.path.dirname(url), "_staging", uuid.uuid4().hex)

    def featurize(part: Iterable[list[Task]]) -> Iterator[str]:
        local = SparkFiles.get(name)
        for group in part:
            for task in group:
                frame = scene_features(task_rows(task, job=staging), local, spec,
                                       task.tile_px, batch_size)
                part_url = storage.join(staging, f"part-{task.key}.parquet")
                storage.write_parquet(part_url, _table(frame, key))
                yield part_url

    try:
        if tasks:
            groups = group_tasks(tasks, default_partitions(tasks, sc.defaultParallelism))
            parts = sorted(set(sc.parallelize(groups, len(groups)).mapPartitions(featurize)
                               .collect()))
        else:
            parts = []
        schema = SCHEMA.with_metadata({KEY: json.dumps(key, sort_keys=True).encode()})
        if parts:
            merge_parts(parts, url, schema)
        else:
            storage.write_parquet(url, _table(_empty(), key))
    finally:
        remove_prefix(staging)
