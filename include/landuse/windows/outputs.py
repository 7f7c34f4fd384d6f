"""What sliding-window scoring writes, each file atomically (temp + rename, or one upload).

* ``probabilities.tif``: the dense class-probability map, a Cloud-Optimised GeoTIFF with one
  float32 band per class (band descriptions are the class names; NaN where a window was
  not scored). One cell per window: the ``stride`` × ``stride`` square at the window's
  centre, so the cells tile the scored area; in the input's CRS when it has one, else in
  the input's pixel coordinates.
* ``classes.tif``: the same grid as a uint8 land-use map (class index, 255 = not scored),
  with a colour table.
* ``detections.parquet``: detections after NMS, pixel boxes, plus the box in the image's CRS
  where it has one.
* ``detections.geojson``: the same as RFC 7946 GeoJSON (WGS84 longitude/latitude polygons),
  only for georeferenced images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from landuse import storage
from landuse.windows.grid import WindowError, WindowGrid

NOT_SCORED = 255
# Distinct colours for class maps (the seed's map used red for Developed, white for
# Cultivated, green for the rest; a generic model gets this palette in class order).
PALETTE = [(228, 26, 28), (255, 255, 191), (77, 175, 74), (152, 78, 163), (255, 127, 0),
           (55, 126, 184), (166, 86, 40), (247, 129, 191), (153, 153, 153), (0, 0, 0)]


class GeoreferenceError(WindowError):
    """GeoJSON (or another ground output) was asked for an image without georeferencing."""


def require_crs(image: str, crs: Any) -> None:
    """Check that ``image`` is georeferenced before GeoJSON is promised.

    Raises:
        GeoreferenceError: the image has no CRS.
    """
    if crs is None:
        raise GeoreferenceError(
            f"image {image} has no georeferencing (no CRS): detections cannot be written as "
            "GeoJSON; use a GeoTIFF, or turn GeoJSON off (detections.parquet has pixel boxes)"
        )


def cell_transform(grid: WindowGrid, transform: Affine | None) -> Affine:
    """The dense map's transform: image transform (identity: pixel coordinates) composed
    with the offset to the first window's centre cell and the stride as cell size."""
    base = transform if transform is not None else Affine.identity()
    return base * Affine.translation(grid.cell_offset, grid.cell_offset) * Affine.scale(
        grid.stride)


def _geotiff(
    bands: np.ndarray,
    transform: Affine,
    crs: Any,
    *,
    nodata: float,
    descriptions: Sequence[str],
    tags: dict[str, str],
    colormap: dict[int, tuple[int, int, int]] | None = None,
) -> bytes:
    """A COG in memory: deflate, 256 px blocks, overviews when large enough."""
    count, height, width = bands.shape
    profile = {"driver": "COG", "width": width, "height": height, "count": count,
               "dtype": bands.dtype.name, "crs": crs, "transform": transform, "nodata": nodata,
               "compress": "deflate", "blocksize": 256}
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(bands)
            for i, text in enumerate(descriptions, start=1):
                dst.set_band_description(i, text)
            dst.update_tags(**tags)
            if colormap is not None:
                dst.write_colormap(1, colormap)
        return bytes(memfile.read())


def probability_raster(
    probabilities: np.ndarray,
    grid: WindowGrid,
    classes: Sequence[str],
    *,
    crs: Any,
    transform: Affine | None,
    tags: dict[str, str],
) -> bytes:
    """The dense class-probability COG: one float32 band per class, NaN where not scored."""
    bands = np.ascontiguousarray(
        np.asarray(probabilities, dtype=np.float32).reshape(grid.rows, grid.cols, -1)
        .transpose(2, 0, 1))
    return _geotiff(bands, cell_transform(grid, transform), crs, nodata=float("nan"),
                    descriptions=list(classes), tags={**tags, "classes": json.dumps(
                        list(classes))})


def class_map(
    probabilities: np.ndarray,
    grid: WindowGrid,
    classes: Sequence[str],
    *,
    crs: Any,
    transform: Affine | None,
    tags: dict[str, str],
) -> bytes:
    """The land-use map: each cell's most probable class index, 255 where not scored."""
    probs = np.asarray(probabilities, dtype=np.float32).reshape(grid.rows, grid.cols, -1)
    scored = np.asarray(~np.isnan(probs).any(axis=2))
    index = np.where(scored, np.where(scored[..., None], probs, -1).argmax(axis=2), NOT_SCORED)
    colours = {i: PALETTE[i % len(PALETTE)] for i in range(len(classes))}
    colours[NOT_SCORED] = (0, 0, 0)
    return _geotiff(index.astype(np.uint8)[None], cell_transform(grid, transform), crs,
                    nodata=NOT_SCORED, descriptions=["class"],
                    tags={**tags, "classes": json.dumps(list(classes))}, colormap=colours)


def ground_boxes(detections: pd.DataFrame, transform: Affine) -> pd.DataFrame:
    """Detections with their boxes in the image CRS added (x_min, y_min, x_max, y_max)."""
    out = detections.copy()
    xs0, ys0 = transform * (detections["col0"].to_numpy(), detections["row0"].to_numpy())
    xs1, ys1 = transform * (detections["col1"].to_numpy(), detections["row1"].to_numpy())
    out["x_min"], out["x_max"] = np.minimum(xs0, xs1), np.maximum(xs0, xs1)
    out["y_min"], out["y_max"] = np.minimum(ys0, ys1), np.maximum(ys0, ys1)
    return out


def detections_geojson(
    detections: pd.DataFrame, crs: Any, transform: Affine, *, image: str, model_id: str
) -> dict[str, Any]:
    """Detections as an RFC 7946 FeatureCollection: WGS84 polygons, properties class, score,
    windows merged, pixel box and the box in the image CRS.

    Raises:
        GeoreferenceError: the image has no CRS.
    """
    require_crs(image, crs)
    import shapely
    from rasterio.warp import transform as reproject_points
    from shapely.geometry import mapping

    def to_wgs84(xy: np.ndarray) -> np.ndarray:
        lon, lat = reproject_points(crs, "EPSG:4326", xy[:, 0].tolist(), xy[:, 1].tolist())
        return np.round(np.column_stack([lon, lat]), 8)

    boxes = ground_boxes(detections, transform)
    polygons = shapely.transform(shapely.box(boxes["x_min"], boxes["y_min"], boxes["x_max"],
                                             boxes["y_max"]), to_wgs84)
    # RFC 7946 section 3.1.6: exterior rings counter-clockwise
    polygons = shapely.orient_polygons(polygons, exterior_cw=False)
    features = []
    for row, polygon in zip(boxes.itertuples(index=False), polygons, strict=True):
        features.append({
            "type": "Feature",
            "geometry": mapping(polygon),
            "properties": {
                "class": str(row[0]), "score": round(float(row.score), 6),
                "windows": int(row.windows),
                "pixel_box": [row.row0, row.col0, row.row1, row.col1],
                "crs_box": [row.x_min, row.y_min, row.x_max, row.y_max],
            },
        })
    return {"type": "FeatureCollection", "features": features,
            "landuse:image": image, "landuse:model_id": model_id,
            "landuse:crs": crs.to_string()}


def detections_table(detections: pd.DataFrame, transform: Affine | None, crs: Any) -> pa.Table:
    """The Parquet form: pixel boxes, plus CRS boxes and the CRS (schema metadata) when the
    image is georeferenced."""
    georeferenced = crs is not None and transform is not None
    frame = ground_boxes(detections, transform) if georeferenced else detections
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if crs is not None:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"landuse:crs": crs.to_wkt().encode()})
    return table


def write_outputs(
    out: str,
    probabilities: np.ndarray,
    grid: WindowGrid,
    classes: Sequence[str],
    detections: pd.DataFrame,
    *,
    crs: Any,
    transform: Affine | None,
    geojson: bool,
    image: str,
    model_id: str,
) -> dict[str, str]:
    """Write every output under the folder URL ``out``; returns name -> URL.

    Raises:
        GeoreferenceError: GeoJSON asked for an image without a CRS.
    """
    if geojson:  # before anything is written
        require_crs(image, crs)
    tags = {"image": image, "model_id": model_id, "window_size": str(grid.size),
            "stride": str(grid.stride)}
    urls = {name: storage.join(out, name) for name in
            ("probabilities.tif", "classes.tif", "detections.parquet")}
    with rasterio.Env():
        storage.write_bytes(urls["probabilities.tif"], probability_raster(
            probabilities, grid, classes, crs=crs, transform=transform, tags=tags))
        storage.write_bytes(urls["classes.tif"], class_map(
            probabilities, grid, classes, crs=crs, transform=transform, tags=tags))
    storage.write_parquet(urls["detections.parquet"],
                          detections_table(detections, transform, crs))
    if geojson:
        urls["detections.geojson"] = storage.join(out, "detections.geojson")
        collection = detections_geojson(detections, crs, transform or Affine.identity(),
                                        image=image, model_id=model_id)
        storage.write_bytes(urls["detections.geojson"], json.dumps(collection).encode())
    return urls
