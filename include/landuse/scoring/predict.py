"""In-process scoring: the batch loop every scorer shares, Spark workers included.

Tiles come two ways. A manifest's tiles are read straight from their NAIP scene
(:func:`score_scene`: the scene is opened once, each tile's window read with
:func:`landuse.tiling.read_tile`, the read training uses through :mod:`landuse.tiles`); a folder of
chips, or a manifest of chips without scenes, is read chip by chip (:func:`score_frame`).

A tile that cannot be read or decoded becomes an error row (its ``error`` says why), never a
failed county; every other tile gets the bundle's class probabilities, the predicted class
and its group, and the model id. Probability columns follow :data:`landuse.labels.CLASSES`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from landuse import labels, storage
from landuse.models.preprocessing import ImageError, PreprocessSpec, decode
from landuse.models.runners import Runner
from landuse.raster import RasterError
from landuse.tiles import RGB, SCENE_COLUMNS  # what reading a tile from its scene needs

PREDICTION_SCHEMA = pa.schema(
    [
        ("tile_id", pa.string()),
        ("county", pa.string()),
        ("year", pa.int32()),
        ("image_url", pa.string()),
        ("label", pa.string()),
        *[(f"p_{c}", pa.float32()) for c in labels.CLASSES],
        ("predicted", pa.string()),
        ("predicted_group", pa.string()),
        ("confidence", pa.float32()),
        ("model_id", pa.string()),
        ("error", pa.string()),
    ]
)
INPUT_COLUMNS = ("tile_id", "county", "year", "image_url", "label")


def manifest_tile_px(url: str, schema: pa.Schema | None = None) -> int | None:
    """The tile size a manifest's tiles were cut at (its recorded tiling config), or None
    for a manifest without one (hand-made manifests of chips)."""
    from landuse.tiling import INPUTS_KEY

    if schema is None:
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(url)
        schema = storage.with_retries(f"cannot read {url}",
                                      lambda: pq.read_schema(path, filesystem=fs))
    recorded = (schema.metadata or {}).get(INPUTS_KEY)
    if not recorded:
        return None
    return int(json.loads(recorded)["config"]["tile_px"])


def is_scene_manifest(schema: pa.Schema) -> bool:
    """Whether a manifest locates its tiles in scenes (tiling's manifests), so its tiles can
    be read straight from the scenes, chips or not."""
    return all(c in schema.names for c in SCENE_COLUMNS)


def is_manifest_source(source: str) -> bool:
    """Whether ``source`` names manifests (Parquet) rather than a folder / glob of chips."""
    return source.endswith(".parquet") or "*.parquet" in source


def scoreable(frame: pd.DataFrame) -> pd.DataFrame:
    """A manifest's tiles that have imagery: a chip, or a window in a scene (tiles tiling
    found empty have neither)."""
    has = frame["image_url"].notna() if "image_url" in frame else pd.Series(False, frame.index)
    if "scene_url" in frame:
        empty = frame["status"] == "empty" if "status" in frame else False
        has |= frame["scene_url"].notna() & ~empty
    return frame[has]


def load_source(source: str) -> pd.DataFrame:
    """Tiles to score from a manifest (or a glob of manifests), or a folder / glob of images.

    Holds every tile in memory: for in-process scoring (Spark plans per scene instead).

    Returns:
        One row per tile with tile_id, county, year, image_url and label (None when absent);
        for manifests that locate tiles in scenes also scene_url, the tile's bounds and
        tile_px (the size tiling cut them at, None where the manifest does not record it).

    Raises:
        ValueError: nothing to score at ``source``.
    """
    columns = list(INPUT_COLUMNS)
    if is_manifest_source(source):
        urls = storage.glob(source) if "*" in source else [source]
        frames = []
        for url in urls:
            table = storage.read_parquet(url)
            part = table.to_pandas()
            if is_scene_manifest(table.schema):
                part["tile_px"] = manifest_tile_px(url, table.schema)
            frames.append(part)
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if not frame.empty:
            frame = scoreable(frame)
            if "scene_url" in frame:
                columns += [*SCENE_COLUMNS, "tile_px"]
    else:
        pattern = source if "*" in source else storage.join(source, "*.png")
        images = storage.glob(pattern)
        frame = pd.DataFrame({
            "tile_id": [u.rsplit("/", 1)[-1].rsplit(".", 1)[0] for u in images],
            "image_url": images,
        })
    if frame.empty:
        raise ValueError(f"nothing to score at {source}: no tiles with images")
    for column in columns:
        if column not in frame:
            frame[column] = None
    return frame.loc[:, columns].reset_index(drop=True)


def check_tiles_fit(rows: pd.DataFrame, bundle_path: str, spec: PreprocessSpec,
                    probe: int = 5) -> None:
    """Refuse a source whose tiles do not fit the bundle (another size, too few bands).

    Training fed the network tiles of its own size; silently resizing other tiles would
    change their ground resolution and the predictions with it. Looks at the first
    readable tiles only (unreadable ones become error rows later).

    Raises:
        ValueError: naming the tile, its size or bands, and what the bundle expects.
    """
    from PIL import Image

    size = spec.input_size
    if "tile_px" in rows:
        for tile_px in rows["tile_px"].dropna().unique():
            if int(tile_px) != size:
                raise ValueError(f"tiles were cut at {int(tile_px)}x{int(tile_px)} px but bundle "
                                 f"{bundle_path} expects {size}x{size}: tile at the model's size")
    for url in rows["image_url"].dropna().head(probe):
        try:
            with Image.open(io.BytesIO(storage.read_bytes(url))) as img:
                width, height, bands = img.width, img.height, len(img.getbands())
        except (OSError, storage.StorageError):
            continue
        if (width, height) != (size, size):
            raise ValueError(f"tile {url} is {width}x{height} px but bundle {bundle_path} "
                             f"expects {size}x{size}: tile at the model's size")
        if bands < 3 and img.mode != "P":
            raise ValueError(f"tile {url} has {bands} band(s) but bundle {bundle_path} needs "
                             f"{', '.join(spec.bands)}")
        return


def score_frame(rows: pd.DataFrame, runner: Runner, batch_size: int = 32) -> pd.DataFrame:
    """Score tiles in batches; unreadable tiles become error rows.

    Rows with a ``scene_url`` (a manifest's tiles) are read from their scene, one scene at a
    time (:func:`score_scene`); the others from their chip (``image_url``).

    Raises:
        StorageUnavailable: storage stayed unreachable through the retries: a tile that
            could not be fetched is not a bad tile, so the whole batch fails to be retried.
    """
    if "scene_url" not in rows or rows["scene_url"].isna().all():
        return score_chips(rows, runner, batch_size)
    from_scene = rows["scene_url"].notna()
    parts = [score_scene(group, runner, batch_size)
             for _, group in rows[from_scene].groupby("scene_url", sort=True)]
    if not from_scene.all():
        parts.append(score_chips(rows[~from_scene], runner, batch_size))
    # Through Arrow: concatenating pandas frames would re-guess all-null columns' dtypes.
    return pa.concat_tables([to_table(p) for p in parts]).to_pandas()


def score_chips(rows: pd.DataFrame, runner: Runner, batch_size: int = 32) -> pd.DataFrame:
    """Score chips (rows with ``image_url``): each read and decoded from storage."""
    spec = runner.bundle.spec.preprocessing

    def load(row: dict[str, Any]) -> np.ndarray:
        return decode(storage.read_bytes(row["image_url"]), spec, row["image_url"])

    return _score_records(rows.to_dict("records"), load, runner, batch_size)


def score_scene(rows: pd.DataFrame, runner: Runner, batch_size: int = 32,
                tile_px: int | None = None) -> pd.DataFrame:
    """Score tiles of one scene (rows with ``scene_url`` and bounds) read from the scene.

    The scene is opened once and the tiles read in raster order, so neighbouring windows come
    from GDAL's block cache; each window is read by :func:`landuse.tiling.read_tile` at
    ``tile_px`` (default: the bundle's input size), exactly as training read them.

    Raises:
        ValueError: the rows span more than one scene.
        StorageUnavailable: storage stayed unreachable through the retries.
    """
    from landuse.raster import open_raster
    from landuse.tiling import chip_rgb, read_tile

    if rows.empty:
        return _score_records([], _unreadable, runner, batch_size)
    scenes = rows["scene_url"].unique()
    if len(scenes) != 1:
        raise ValueError(f"score_scene takes the tiles of one scene, got {len(scenes)}")
    url = str(scenes[0])
    size = tile_px or runner.bundle.spec.preprocessing.input_size
    ordered = rows.sort_values(["maxy", "minx"], ascending=[False, True])  # raster order
    records = ordered.to_dict("records")
    try:
        with open_raster(url) as src:
            def load(row: dict[str, Any]) -> np.ndarray:
                bounds = (row["minx"], row["miny"], row["maxx"], row["maxy"])
                return chip_rgb(read_tile(src, url, bounds, RGB, size))

            return _score_records(records, load, runner, batch_size)
    except storage.StorageUnavailable:
        raise
    except (RasterError, OSError) as err:  # the scene itself: every tile is an error row
        message = f"scene {url}: {err}"

        def fail(row: dict[str, Any]) -> np.ndarray:
            raise ImageError(message)

        return _score_records(records, fail, runner, batch_size)


def _unreadable(row: dict[str, Any]) -> np.ndarray:
    raise ImageError(f"tile {row.get('tile_id')}: nothing to read")


def _score_records(records: list[dict[str, Any]], load: Callable[[dict[str, Any]], np.ndarray],
                   runner: Runner, batch_size: int) -> pd.DataFrame:
    """The batch loop: ``load`` each row's (H, W, 3) uint8 tile, predict, one row per tile."""
    spec = runner.bundle.spec
    classes = list(spec.classes)
    model_id = runner.model_id  # the int8 form has an id of its own
    out: list[dict[str, Any]] = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        tiles, good = [], []
        for row in batch:
            try:
                tiles.append(load(row))
                good.append(row)
            except storage.StorageUnavailable:
                raise  # not the tile's fault: the task fails and is retried, no error row
            except (ImageError, RasterError, storage.StorageError, OSError) as err:
                out.append({**_base(row), "model_id": model_id, "error": str(err)})
        if not good:
            continue
        probs = runner.predict(np.stack(tiles))
        for row, p in zip(good, probs, strict=True):
            best = int(np.argmax(p))
            record = {**_base(row), "model_id": model_id, "error": None,
                      "predicted": classes[best], "confidence": float(p[best]),
                      "predicted_group": labels.CLASS_TO_GROUP.get(classes[best])}
            record.update({f"p_{c}": float(v) for c, v in zip(classes, p, strict=True)})
            out.append(record)
    frame = pd.DataFrame(out)
    for field in PREDICTION_SCHEMA:
        if field.name not in frame:
            frame[field.name] = None
    return frame.loc[:, PREDICTION_SCHEMA.names]


def _base(row: dict[str, Any]) -> dict[str, Any]:
    base = {k: (None if pd.isna(row.get(k)) else row.get(k)) for k in INPUT_COLUMNS}
    if base["year"] is not None:
        base["year"] = int(base["year"])
    return base


def to_table(frame: pd.DataFrame) -> pa.Table:
    """Predictions as an Arrow table of :data:`PREDICTION_SCHEMA`."""
    return pa.Table.from_pandas(frame, schema=PREDICTION_SCHEMA, preserve_index=False)


def accuracy_report(frame: pd.DataFrame, classes: list[str]) -> dict[str, Any] | None:
    """The validation report (6-class and 3-group accuracy, confusion) where labels exist."""
    from landuse.models.metrics import report

    labelled = frame[frame["label"].isin(classes) & frame["error"].isna()]
    if labelled.empty:
        return None
    return report(list(labelled["label"]), list(labelled["predicted"]), classes)
