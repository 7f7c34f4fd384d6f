"""County maps with one pixel per tile: Cloud-Optimized GeoTIFF with a colour table, PNG,
GeoJSON of changed tiles, the seed's side-by-side figure, and matplotlib figures people
would rather look at: maps with title, legend, scale bar and north arrow
(:func:`map_figure`), bar charts of class shares (:func:`shares_chart`) and of transitions
(:func:`transitions_chart`).

Every map is rendered to bytes in memory; the caller publishes them together (see
:func:`landuse.change.run.run_change`), so a reader never sees half a report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely
from PIL import Image
from rasterio.io import MemoryFile
from rasterio.shutil import copy as gdal_copy
from rasterio.warp import transform as reproject_points
from shapely.geometry import mapping

from landuse import labels
from landuse.change.grid import TileLayout

RGB = tuple[int, int, int]
NO_DATA = 0  # palette index 0 is always "no tile / no value"
WATER_COLOUR: RGB = labels.NLCD_COLOURS[11]
UNCERTAIN_COLOUR: RGB = (128, 128, 128)

GROUP_PALETTE: tuple[tuple[str, RGB], ...] = tuple(
    (g, labels.GROUP_COLOURS[g]) for g in labels.GROUPS)  # water last
CLASS_PALETTE: tuple[tuple[str, RGB], ...] = tuple(
    (c, labels.CLASS_COLOURS[c]) for c in labels.CLASSES)
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
    """A GeoJSON FeatureCollection (WGS84, as RFC 7946 wants) of tile squares, built with
    shapely: the squares of each CRS reprojected together, every exterior ring
    counter-clockwise (RFC 7946 section 3.1.6).

    ``tiles`` has tile_id, crs, minx, miny, maxx, maxy and the ``properties`` columns.
    """
    features = []
    for crs, group in tiles.groupby("crs", sort=False):
        def to_wgs84(xy: np.ndarray, crs: str = str(crs)) -> np.ndarray:
            lon, lat = reproject_points(crs, "EPSG:4326", xy[:, 0].tolist(), xy[:, 1].tolist())
            return np.round(np.column_stack([lon, lat]), 7)  # about a centimetre

        # one GDAL call per CRS: per tile it is twenty times slower
        squares = shapely.transform(shapely.box(group.minx, group.miny, group.maxx, group.maxy),
                                    to_wgs84)
        squares = shapely.orient_polygons(squares, exterior_cw=False)
        for (_, row), square in zip(group.iterrows(), squares, strict=True):
            props = {"tile_id": row["tile_id"], "crs": crs}
            props.update({p: _json_value(row[p]) for p in properties})
            features.append({"type": "Feature", "id": row["tile_id"], "properties": props,
                             "geometry": mapping(square)})
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
                 title: str, tile_m: float | None = None) -> bytes:
    """The seed's figure: maps side by side (e.g. reference | year A | year B) with a legend;
    with ``tile_m`` (a tile's width in metres) each panel gets a scale bar and north arrow."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (name, raster) in zip(axes[0], panels, strict=True):
        _draw_map(ax, raster, palette, name, tile_m)
    fig.legend(handles=_legend_handles(palette), loc="lower center",
               ncol=len(palette) + 1, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _png(fig)


def map_figure(raster: np.ndarray, palette: Sequence[tuple[str, RGB]], title: str,
               tile_m: float, crs: str = "") -> bytes:
    """One map as a figure: title, legend, scale bar, north arrow and the CRS named.

    Args:
        raster: palette indices, one pixel per tile (north up, as :class:`TileLayout` paints).
        palette: the names and colours of indices 1, 2, ...
        title: the figure's title.
        tile_m: a tile's width in metres (the layout's ``tile_size``), for the scale bar.
        crs: the grid's CRS, printed under the map.
    """
    if tile_m <= 0:
        raise ValueError(f"tile_m must be a positive width in metres, got {tile_m}")
    plt = _pyplot()
    rows, cols = raster.shape
    width = min(9.0, max(4.5, 0.25 * cols + 3.0))
    fig, ax = plt.subplots(figsize=(width, max(3.5, width * rows / max(cols, 1) * 0.8 + 1.0)))
    _draw_map(ax, raster, palette, "", tile_m)
    if crs:
        ax.set_xlabel(f"one cell = one tile of {tile_m:g} m; grid {crs}", fontsize=8)
    ax.legend(handles=_legend_handles(palette), loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, fontsize=9)
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def shares_chart(counts: Sequence[dict[str, object]], title: str) -> bytes:
    """Grouped horizontal bars of each map's class (or group) shares.

    ``counts`` are the records of :func:`landuse.change.detect.count_table` (a ``map`` name
    and ``<name> share`` columns), as ``summary.json`` keeps them.

    Raises:
        ValueError: no record has a share column.
    """
    shares = [k for k in dict.fromkeys(k for r in counts for k in r) if k.endswith(" share")]
    if not shares:
        raise ValueError("the count table has no '<name> share' columns to chart")
    names = [k.removesuffix(" share") for k in shares]
    colours = dict((*CLASS_PALETTE, *GROUP_PALETTE))  # a group's colour where names clash
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.45 * len(names) * max(1, len(counts)) / 1.6))
    height = 0.8 / max(1, len(counts))
    y = np.arange(len(names))
    hatches = ("", "//", "..", "xx")
    for i, record in enumerate(counts):
        values = [float(record.get(k) or 0.0) for k in shares]  # type: ignore[arg-type]
        bars = ax.barh(y + i * height, values, height, label=str(record.get("map", i)),
                       color=[_rgb01(colours.get(n, (128, 128, 128))) for n in names],
                       edgecolor="black", linewidth=0.6, hatch=hatches[i % len(hatches)])
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in values], padding=2, fontsize=8)
    ax.set_yticks(y + height * (len(counts) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("share of the county's tiles")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatches[i % 4],
                             label=str(r.get("map", i))) for i, r in enumerate(counts)],
              frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def transitions_chart(transitions: dict[str, dict[str, int]], title: str) -> bytes:
    """Stacked horizontal bars: for each year-A group (rows), how many tiles went to each
    year-B group (columns), in the groups' colours.

    Raises:
        ValueError: an empty transition table.
    """
    rows = list(transitions)
    cols = list(dict.fromkeys(c for r in rows for c in transitions[r]))
    if not rows or not cols:
        raise ValueError("the transition table is empty: nothing to chart")
    colours = dict((*CLASS_PALETTE, *GROUP_PALETTE))  # a group's colour where names clash
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.5 * len(rows)))
    left = np.zeros(len(rows))
    for col in cols:
        values = np.array([transitions[r].get(col, 0) for r in rows], dtype=float)
        bars = ax.barh(rows, values, left=left, label=f"to {col}",
                       color=_rgb01(colours.get(col, (128, 128, 128))), edgecolor="black",
                       linewidth=0.6)
        ax.bar_label(bars, labels=[str(int(v)) if v else "" for v in values],
                     label_type="center", fontsize=8,
                     color="black" if sum(colours.get(col, (128,) * 3)) > 300 else "white")
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("tiles")
    ax.set_ylabel("from")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def null_chart(panels: Sequence[tuple[str, np.ndarray, np.ndarray, float, float, float]]
               ) -> bytes:
    """The no-change test, one panel per pair of years: a histogram of the tiles' residual
    normal scores, the no-change null fitted to them (and the chi-squared one), and the bar
    above which Benjamini-Hochberg flagged tiles.

    Each panel is ``(title, scores, flagged, centre, scale, fdr)``.
    """
    from scipy.stats import norm

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 3.6), squeeze=False)
    for ax, (title, scores, flagged, centre, scale, fdr) in zip(axes[0], panels, strict=True):
        scores, flagged = np.asarray(scores, dtype=float), np.asarray(flagged, dtype=bool)
        bins = np.linspace(min(-4.0, scores.min()), max(8.0, scores.max()), 50)
        ax.hist([scores[~flagged], scores[flagged]], bins=bins, stacked=True,
                color=["#9e9e9e", "#d7301f"], label=["not flagged", "flagged"])
        x = np.linspace(bins[0], bins[-1], 400)
        width = bins[1] - bins[0]
        ax.plot(x, len(scores) * width * norm.pdf(x, centre, scale), color="black",
                label=f"no-change null N({centre:.2f}, {scale:.2f}²)")
        ax.plot(x, len(scores) * width * norm.pdf(x), color="black", linestyle=":",
                label="chi-squared null")
        if flagged.any():
            bar = float(scores[flagged].min())
            ax.axvline(bar, color="#d7301f", linestyle="--",
                       label=f"bar at FDR {fdr:g}: {int(flagged.sum())} flagged, "
                             f"~{fdr * flagged.sum():.1f} false")
        ax.set_xlabel("residual normal score (Wilson-Hilferty)")
        ax.set_ylabel("tiles")
        ax.set_title(title)
        ax.legend(frameon=False, fontsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported
    from matplotlib import pyplot as plt

    return plt


def _rgb01(rgb: Sequence[int]) -> tuple[float, float, float]:
    return rgb[0] / 255, rgb[1] / 255, rgb[2] / 255


def _legend_handles(palette: Sequence[tuple[str, RGB]]) -> list[object]:
    from matplotlib.patches import Patch

    return [Patch(facecolor=_rgb01(rgb), edgecolor="black", label=name)
            for name, rgb in (*palette, ("no data", labels.NO_DATA_COLOUR))]


def _draw_map(ax: Any, raster: np.ndarray, palette: Sequence[tuple[str, RGB]], title: str,
              tile_m: float | None) -> None:
    """A paletted raster on ``ax`` with, given the tile width, a scale bar and north arrow."""
    ax.imshow(colourise(raster, palette), interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if tile_m:
        _scale_bar(ax, raster.shape[1], tile_m)
        _north_arrow(ax)


def _scale_bar(ax: Any, cols: int, tile_m: float) -> None:
    """A scale bar of a round length, about a quarter of the map's width."""
    from matplotlib import patheffects
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    metres = _round_length(cols * tile_m / 4)
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    bar = AnchoredSizeBar(ax.transData, metres / tile_m, label, "lower left",
                          pad=0.3, borderpad=0.4, sep=3, frameon=True, size_vertical=0.15,
                          color="black", fontproperties={"size": 8})
    bar.patch.set_alpha(0.8)
    bar.txt_label._text.set_path_effects(  # no public accessor for the label's text
        [patheffects.withStroke(linewidth=2, foreground="white")])
    ax.add_artist(bar)


def _round_length(metres: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above ``metres`` (at least 1 m)."""
    if metres < 1:
        return 1.0
    power = 10 ** math.floor(math.log10(metres))
    return float(max(m * power for m in (1, 2, 5) if m * power <= metres))


def _north_arrow(ax: Any) -> None:
    """An arrow and 'N' in the upper right corner (the tile grid is north up)."""
    ax.annotate("N", xy=(0.93, 0.95), xytext=(0.93, 0.78), xycoords="axes fraction",
                ha="center", va="center", fontsize=10, fontweight="bold",
                arrowprops={"facecolor": "black", "edgecolor": "white", "width": 3,
                            "headwidth": 9, "headlength": 8},
                bbox={"boxstyle": "circle,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})


def _png(fig: Any) -> bytes:
    from matplotlib import pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
