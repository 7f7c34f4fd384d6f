"""County maps with one pixel per tile: Cloud-Optimized GeoTIFF with a colour table, PNG,
GeoJSON of changed tiles, and the seed's side-by-side figure.

Every map is rendered to bytes in memory; the caller publishes them together (see
:func:`landuse.change.run.run_change`), so a reader never sees half a report.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from rasterio.io import MemoryFile
from rasterio.shutil import copy as gdal_copy
from rasterio.warp import transform as reproject_points

from landuse import labels
from landuse.change.grid import TileLayout

RGB = tuple[int, int, int]
NO_DATA = 0  # palette index 0 is always "no tile / no value"
WATER_COLOUR: RGB = labels.NLCD_COLOURS[11]
UNCERTAIN_COLOUR: RGB = (128, 128, 128)

GROUP_PALETTE: tuple[tuple[str, RGB], ...] = (
    *((g, labels.GROUP_COLOURS[g]) for g in labels.GROUPS), ("Water", WATER_COLOUR))
CLASS_PALETTE: tuple[tuple[str, RGB], ...] = (
    *((c, labels.CLASS_COLOURS[c]) for c in labels.CLASSES), ("Water", WATER_COLOUR))
CHANGE_PALETTE: tuple[tuple[str, RGB], ...] = (
    ("no change", (235, 235, 235)), ("newly developed", (255, 0, 0)),
    ("other change", (255, 165, 0)), ("uncertain", UNCERTAIN_COLOUR))


def categorical(layout: TileLayout, values: pd.Series,
                palette: Sequence[tuple[str, RGB]]) -> np.ndarray:
    """Palette indices (1-based; 0 = no data) of category names per tile id."""
    codes = values.map({name: i + 1 for i, (name, _) in enumerate(palette)})
    return layout.paint(codes, NO_DATA, "uint8")


def cog_bytes(raster: np.ndarray, layout: TileLayout, palette: Sequence[tuple[str, RGB]],
              description: str) -> bytes:
    """A one-band paletted Cloud-Optimized GeoTIFF (opens coloured in QGIS)."""
    profile = {"driver": "GTiff", "width": raster.shape[1], "height": raster.shape[0],
               "count": 1, "dtype": "uint8", "crs": layout.crs,
               "transform": layout.transform, "nodata": NO_DATA}
    colormap = {0: (0, 0, 0, 0), **{i + 1: (*rgb, 255) for i, (_, rgb) in enumerate(palette)}}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write_colormap(1, colormap)  # before the pixels: it sets the photometric tag
            dst.write(raster, 1)
            dst.update_tags(1, **{f"CLASS_{i + 1}": n for i, (n, _) in enumerate(palette)})
            dst.update_tags(TIFFTAG_IMAGEDESCRIPTION=description)
        with mem.open() as src, MemoryFile() as out:
            gdal_copy(src, out.name, driver="COG", compress="DEFLATE", overview_resampling="mode")
            return bytes(out.read())


def png_bytes(raster: np.ndarray, palette: Sequence[tuple[str, RGB]], scale: int = 1) -> bytes:
    """The map as an RGB PNG (no data black), each tile ``scale`` pixels wide."""
    rgb = colourise(raster, palette)
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def colourise(raster: np.ndarray, palette: Sequence[tuple[str, RGB]]) -> np.ndarray:
    """RGB image of a palette-index raster."""
    lut = np.array([labels.NO_DATA_COLOUR, *(rgb for _, rgb in palette)], dtype=np.uint8)
    return lut[raster]


def tiles_geojson(tiles: pd.DataFrame, properties: Sequence[str]) -> dict[str, object]:
    """A GeoJSON FeatureCollection (WGS84, as RFC 7946 wants) of tile squares.

    ``tiles`` has tile_id, crs, minx, miny, maxx, maxy and the ``properties`` columns.
    """
    features = []
    for crs, group in tiles.groupby("crs", sort=False):
        xs = np.stack([group.minx, group.maxx, group.maxx, group.minx, group.minx], axis=1)
        ys = np.stack([group.miny, group.miny, group.maxy, group.maxy, group.miny], axis=1)
        lon, lat = reproject_points(crs, "EPSG:4326", xs.ravel().tolist(), ys.ravel().tolist())
        lon_a, lat_a = np.reshape(lon, xs.shape), np.reshape(lat, ys.shape)
        for i, (_, row) in enumerate(group.iterrows()):
            ring = [[round(float(x), 7), round(float(y), 7)]
                    for x, y in zip(lon_a[i], lat_a[i], strict=True)]
            props = {"tile_id": row["tile_id"], "crs": crs}
            props.update({p: _json_value(row[p]) for p in properties})
            features.append({"type": "Feature", "id": row["tile_id"], "properties": props,
                             "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return {"type": "FeatureCollection", "features": features}


def _json_value(value: object) -> object:
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else round(float(value), 4)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return None if value is pd.NA or value is None else value


def side_by_side(panels: Sequence[tuple[str, np.ndarray]], palette: Sequence[tuple[str, RGB]],
                 title: str) -> bytes:
    """The seed's figure: maps side by side (e.g. reference | year A | year B) with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, raster) in zip(axes[0], panels, strict=True):
        ax.imshow(colourise(raster, palette), interpolation="nearest")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=(rgb[0] / 255, rgb[1] / 255, rgb[2] / 255), edgecolor="black",
                     label=name)
               for name, rgb in (*palette, ("no data", labels.NO_DATA_COLOUR))]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
