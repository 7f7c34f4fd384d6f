"""Tiles as pixels: a county's tiles laid out on their grid, one pixel per tile.

Tile ids are ``{epsg}_{col}_{row}`` on a grid aligned to multiples of the tile size (see
:mod:`landuse.tiling`), so the same id is the same ground in every vintage and a county's
tiles form a raster whose pixel is one tile. A county that straddles two UTM zones has one
such raster per zone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from affine import Affine


@dataclass(frozen=True)
class TileLayout:
    """Where each tile of one CRS falls on a north-up raster of one pixel per tile."""

    crs: str
    tile_size: float
    transform: Affine
    shape: tuple[int, int]  # rows, cols
    tile_ids: tuple[str, ...]
    rows: np.ndarray  # raster row of each tile id
    cols: np.ndarray

    def paint(self, values: pd.Series, fill: float | int, dtype: str) -> np.ndarray:
        """A raster with ``values`` (indexed by tile id) at their tiles, ``fill`` elsewhere."""
        out = np.full(self.shape, fill, dtype=dtype)
        aligned = values.reindex(list(self.tile_ids))
        known = aligned.notna().to_numpy()
        out[self.rows[known], self.cols[known]] = aligned.to_numpy()[known].astype(dtype)
        return out

    def read(self, raster: np.ndarray) -> pd.Series:
        """The raster's value at each tile, indexed by tile id (the inverse of :meth:`paint`)."""
        return pd.Series(raster[self.rows, self.cols], index=list(self.tile_ids))


def parse_tile_ids(tile_ids: pd.Series) -> pd.DataFrame:
    """Columns epsg, col, row from tile ids ``{epsg}_{col}_{row}``.

    Raises:
        ValueError: an id is not of that form (names the first one).
    """
    parts = tile_ids.astype(str).str.extract(r"^(\d+)_(-?\d+)_(-?\d+)\Z")  # \Z: no "\n"
    bad = parts.isna().any(axis=1)
    if bad.any():
        raise ValueError(f"tile id {tile_ids[bad].iloc[0]!r} is not of the form epsg_col_row")
    parts.columns = ["epsg", "col", "row"]
    parts.index = tile_ids.index
    return parts.astype(int)


def layouts(tiles: pd.DataFrame) -> list[TileLayout]:
    """One layout per CRS for tiles with columns tile_id, crs, minx, miny, maxx, maxy.

    Raises:
        ValueError: tiles of one CRS have different sizes, or a tile's bounds disagree with
            its id (the grid is not the aligned tile grid).
    """
    out = []
    for crs, group in tiles.groupby("crs", sort=True):
        sizes = sorted(float(s) for s in (group["maxx"] - group["minx"]).round(6).unique())
        if len(sizes) != 1:
            raise ValueError(f"tiles in {crs} have different sizes {sizes} m: one grid "
                             "needs one tile size")
        size = float(sizes[0])
        ids = parse_tile_ids(group["tile_id"])
        # absolute tolerance: a relative one is metres at UTM coordinates
        if not (np.allclose(ids["col"] * size, group["minx"], rtol=0, atol=1e-3)
                and np.allclose(ids["row"] * size, group["miny"], rtol=0, atol=1e-3)):
            raise ValueError(f"tiles in {crs} are not on the {size:g} m grid their ids name")
        col0, row_top = int(ids["col"].min()), int(ids["row"].max())
        shape = (row_top - int(ids["row"].min()) + 1, int(ids["col"].max()) - col0 + 1)
        out.append(TileLayout(
            crs=str(crs), tile_size=size,
            transform=Affine(size, 0, col0 * size, 0, -size, (row_top + 1) * size),
            shape=shape, tile_ids=tuple(group["tile_id"]),
            rows=(row_top - ids["row"]).to_numpy(), cols=(ids["col"] - col0).to_numpy(),
        ))
    return out


def plurality_smooth(codes: np.ndarray, n_categories: int, centre_weight: float = 2.0,
                     missing: int = -1) -> np.ndarray:
    """3×3 plurality filter of a categorical raster, the centre tile weighing more.

    Each tile takes the category with the most votes among itself (``centre_weight`` votes)
    and its eight neighbours (one each); ties go to the centre's own category. Missing tiles
    (``missing``) neither vote nor change.
    """
    if centre_weight < 1:
        raise ValueError(f"centre_weight must be at least 1, got {centre_weight}")
    h, w = codes.shape
    votes = np.zeros((n_categories, h + 2, w + 2))
    present = codes != missing
    onehot = np.zeros((n_categories, h, w))
    onehot[codes[present], *np.nonzero(present)] = 1.0
    for dy in range(3):
        for dx in range(3):
            votes[:, dy:dy + h, dx:dx + w] += onehot
    votes = votes[:, 1:-1, 1:-1] + onehot * (centre_weight - 1 + 1e-6)  # tie -> centre
    return np.where(present, votes.argmax(axis=0), missing).astype(codes.dtype)
