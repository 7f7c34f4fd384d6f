"""In-process scoring: the batch loop every scorer shares, Spark workers included.

A tile that cannot be read or decoded becomes an error row (its ``error`` says why), never a
failed county; every other tile gets the bundle's class probabilities, the predicted class
and its group, and the model id.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from landuse import labels, storage
from landuse.models.preprocessing import ImageError, PreprocessSpec, decode
from landuse.models.runners import Runner

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


def load_source(source: str) -> pd.DataFrame:
    """Tiles to score from a manifest (or a glob of manifests), or a folder / glob of images.

    Returns:
        One row per tile with tile_id, county, year, image_url and label (None when absent).

    Raises:
        ValueError: nothing to score at ``source``.
    """
    if source.endswith(".parquet") or "*.parquet" in source:
        urls = storage.glob(source) if "*" in source else [source]
        frames = [storage.read_parquet(u).to_pandas() for u in urls]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if not frame.empty:
            frame = frame[frame["image_url"].notna()]
    else:
        pattern = source if "*" in source else storage.join(source, "*.png")
        images = storage.glob(pattern)
        frame = pd.DataFrame({
            "tile_id": [u.rsplit("/", 1)[-1].rsplit(".", 1)[0] for u in images],
            "image_url": images,
        })
    if frame.empty:
        raise ValueError(f"nothing to score at {source}: no tiles with images")
    for column in INPUT_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame.loc[:, list(INPUT_COLUMNS)].reset_index(drop=True)


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
    for url in rows["image_url"].head(probe):
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
    """Score tiles (rows with ``image_url``) in batches; unreadable tiles become error rows.

    Raises:
        StorageUnavailable: storage stayed unreachable through the retries: a tile that
            could not be fetched is not a bad tile, so the whole batch fails to be retried.
    """
    spec = runner.bundle.spec
    classes = list(spec.classes)
    model_id = runner.bundle.model_id
    out: list[dict[str, Any]] = []
    records = rows.to_dict("records")
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        tiles, good = [], []
        for row in batch:
            try:
                tiles.append(decode(storage.read_bytes(row["image_url"]), spec.preprocessing,
                                    row["image_url"]))
                good.append(row)
            except storage.StorageUnavailable:
                raise  # not the tile's fault: the task fails and is retried, no error row
            except (ImageError, storage.StorageError, OSError) as err:
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
