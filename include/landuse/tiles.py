"""A split's or manifest's tiles as pixels: the read path training, evaluation and int8
calibration share with scoring and change detection.

Rows that locate their tile in a scene (``scene_url`` and bounds, as tiling's manifests and
the splits made from them do) are read from the scene with :func:`landuse.tiling.read_tile`,
the window read scoring and change use, batched by scene: each scene is opened once per batch
of its tiles and read in raster order. Only rows without a scene (hand-made manifests of
chips) are decoded from their chip. So a tile a model trained on is, by construction, the
tile it is scored on. :class:`TileCache` keeps tiles once read in a local memory-mapped file,
so that epochs after the first do not go back to (blob) storage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from landuse import storage
from landuse.models.preprocessing import ImageError, PreprocessSpec, decode
from landuse.raster import RasterError, open_raster
from landuse.tiling import chip_rgb, read_tile

RGB = ("red", "green", "blue")  # the network's channels; a NIR band is not read
SCENE_COLUMNS = ("scene_url", "minx", "miny", "maxx", "maxy")


def from_scene(rows: pd.DataFrame) -> pd.Series:
    """Which rows can be read from their scene (a scene URL and bounds)."""
    if not all(c in rows for c in SCENE_COLUMNS):
        return pd.Series(False, index=rows.index)
    return rows["scene_url"].notna() & rows["minx"].notna()


def read_tiles(rows: pd.DataFrame, spec: PreprocessSpec) -> np.ndarray:
    """The (N, size, size, 3) uint8 RGB pixels of ``rows``' tiles, in row order, at the
    spec's input size.

    Raises:
        ImageError: a tile or its scene cannot be read; the message names the tile and file.
        StorageUnavailable: storage stayed unreachable through the retries (not the tile's
            fault: the caller fails and is retried).
    """
    size = spec.input_size
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    rows = rows.reset_index(drop=True)  # row i fills out[i]
    scene = from_scene(rows)
    if scene.any():
        for url, group in rows[scene].groupby("scene_url", sort=True):
            _read_scene(str(url), group, size, out)
    for i, row in rows[~scene].iterrows():
        out[i] = _read_chip(row, spec)
    return out


def _read_scene(url: str, group: pd.DataFrame, size: int, out: np.ndarray) -> None:
    ordered = group.sort_values(["maxy", "minx"], ascending=[False, True])  # raster order
    try:
        with open_raster(url) as src:
            for i, t in zip(ordered.index, ordered.itertuples(), strict=True):
                try:
                    pixels = read_tile(src, url, (t.minx, t.miny, t.maxx, t.maxy), RGB, size)
                except RasterError as err:
                    raise ImageError(f"tile {t.tile_id}: {err}") from err
                out[i] = chip_rgb(pixels)
    except RasterError as err:  # the scene itself: name a tile so the split can be fixed
        raise ImageError(f"tile {group['tile_id'].iloc[0]}: {err}") from err


def _read_chip(row: pd.Series, spec: PreprocessSpec) -> np.ndarray:
    url = row.get("image_url")
    if not isinstance(url, str):
        raise ImageError(f"tile {row.get('tile_id')}: neither a scene window nor a chip")
    try:
        return decode(storage.read_bytes(url), spec, url)
    except storage.StorageUnavailable:
        raise  # storage trouble, not a bad tile: retried, never reported as bad input
    except storage.StorageError as err:
        raise ImageError(f"{url}: {err}") from err


class TileCache:
    """The tiles of a fixed set of rows, read on first use and kept in a local
    memory-mapped file: epochs after the first read local disk (or the page cache), never
    storage again. About 150 kB per 224 px tile on local disk, not in memory.
    """

    def __init__(self, rows: pd.DataFrame, spec: PreprocessSpec, folder: str | Path,
                 name: str = "tiles") -> None:
        self.rows = rows.reset_index(drop=True)
        self.spec = spec
        size = spec.input_size
        self.pixels = np.lib.format.open_memmap(
            Path(folder) / f"{name}.npy", mode="w+", dtype=np.uint8,
            shape=(max(len(self.rows), 1), size, size, 3))
        self.filled = np.zeros(len(self.rows), dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """The tiles at ``indices`` (N, size, size, 3), reading those not read before.

        Raises:
            ImageError: see :func:`read_tiles`.
        """
        indices = np.asarray(indices, dtype=np.int64)
        missing = np.unique(indices[~self.filled[indices]])
        if missing.size:
            self.pixels[missing] = read_tiles(self.rows.iloc[missing], self.spec)
            self.filled[missing] = True
        return np.asarray(self.pixels[indices])

    def all(self, batch: int = 256) -> np.ndarray:
        """Every tile, read scene by scene in batches; a memory-mapped view (not a copy in
        memory)."""
        scenes = (self.rows["scene_url"].fillna("") if "scene_url" in self.rows
                  else pd.Series("", index=self.rows.index))
        order = np.argsort(scenes.to_numpy(dtype=str), kind="stable")  # each scene ~once
        for start in range(0, len(order), batch):
            self.get(order[start:start + batch])
        return self.pixels[: len(self)]
