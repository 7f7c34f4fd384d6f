"""Change-detection fixtures: hand-made manifests and predictions (``change_kit``), and the
synthetic counties tiled for both years (``change_root``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pytest

from landuse import labels, storage
from landuse.scoring.predict import PREDICTION_SCHEMA, to_table
from landuse.scoring.spark import predictions_url
from landuse.tiling import manifest_url

EPSG = 32614
SIZE = 224.0
# Somewhere in North Dakota on the UTM 14N tile grid (col, row of the lower-left tile).
COL0, ROW0 = 2300, 22900


def manifest(
    cells: Iterable[tuple[int, int]],
    tile_labels: Sequence[str | None] | None = None,
    *,
    epsg: int = EPSG,
    size: float = SIZE,
    county: str = "testcounty",
    year: int = 2010,
    scene_url: str | None = None,
) -> pd.DataFrame:
    """Manifest rows for tiles at grid cells (col, row): id ``{epsg}_{col}_{row}``, bounds
    ``col * size``..., a made-up image URL and the given labels."""
    cells = list(cells)
    tile_labels = list(tile_labels) if tile_labels is not None else [None] * len(cells)
    rows = []
    for (col, row), label in zip(cells, tile_labels, strict=True):
        tile_id = f"{epsg}_{col}_{row}"
        rows.append({
            "tile_id": tile_id, "county": county, "year": year, "crs": f"EPSG:{epsg}",
            "minx": col * size, "miny": row * size, "maxx": (col + 1) * size,
            "maxy": (row + 1) * size, "image_url": f"/nowhere/{year}/{tile_id}.png",
            "label": label,
            "group": labels.CLASS_TO_GROUP.get(label) if label else None,
            "scene_url": scene_url,
        })
    return pd.DataFrame(rows)


def grid(cols: int, rows: int, col0: int = COL0, row0: int = ROW0) -> list[tuple[int, int]]:
    """Cells of a cols × rows block, row by row from the top (north) left, like reading a map."""
    return [(col0 + c, row0 + rows - 1 - r) for r in range(rows) for c in range(cols)]


def predictions(
    tiles: pd.DataFrame,
    classes: Sequence[str | None],
    confidence: float | Sequence[float] = 0.9,
    *,
    model_id: str = "model@1",
    model_classes: Sequence[str] = labels.CLASSES,
    year: int = 2016,
    county: str = "testcounty",
) -> pd.DataFrame:
    """Prediction rows (:data:`PREDICTION_SCHEMA`) for ``tiles``: the predicted class gets
    ``confidence``, the other classes of the model share the rest; ``None`` is an error row."""
    if isinstance(confidence, float | int):
        confidence = [float(confidence)] * len(tiles)
    rows = []
    for tile, klass, conf in zip(tiles.itertuples(), classes, confidence, strict=True):
        record: dict[str, object] = {
            "tile_id": tile.tile_id, "county": county, "year": year,
            "image_url": tile.image_url, "label": tile.label, "model_id": model_id,
        }
        if klass is None:
            record["error"] = f"{tile.image_url}: not a readable image"
        else:
            rest = (1 - conf) / (len(model_classes) - 1)
            for c in model_classes:
                record[f"p_{c}"] = conf if c == klass else rest
            record.update(predicted=klass, predicted_group=labels.CLASS_TO_GROUP[klass],
                          confidence=conf, error=None)
        rows.append(record)
    frame = pd.DataFrame(rows)
    for name in PREDICTION_SCHEMA.names:
        if name not in frame:
            frame[name] = None
    return frame.loc[:, PREDICTION_SCHEMA.names]


def write_manifest(root: str, county: str, year: int, frame: pd.DataFrame) -> str:
    url = manifest_url(root, county, year)
    storage.write_parquet(url, pa.Table.from_pandas(frame, preserve_index=False))
    return url


def write_predictions(root: str, county: str, year: int, frame: pd.DataFrame) -> str:
    url = predictions_url(storage.join(root, "predictions"), county, year)
    storage.write_parquet(url, to_table(frame))
    return url


@pytest.fixture(scope="session")
def change_kit() -> SimpleNamespace:
    """Helpers to build change inputs by hand (see the functions of this module)."""
    return SimpleNamespace(
        manifest=manifest, grid=grid, predictions=predictions, write_manifest=write_manifest,
        write_predictions=write_predictions, EPSG=EPSG, SIZE=SIZE, COL0=COL0, ROW0=ROW0,
    )


@pytest.fixture(scope="session")
def change_root(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> SimpleNamespace:
    """synthetic-county-1 tiled (64 px tiles, with NLCD labels) for 2010 and 2016."""
    from landuse import counties
    from landuse.tiling import TilingConfig, build_county

    root = tmp_path_factory.mktemp("change-tiles")
    county = counties.load_registry(str(synthetic / "counties.json"))["synthetic-county-1"]
    build_county(county, [2010, 2016], str(root), TilingConfig(tile_px=64))
    frames = {y: storage.read_parquet(manifest_url(str(root), county.name, y)).to_pandas()
              for y in (2010, 2016)}
    return SimpleNamespace(root=root, county=county, manifests=frames)
