"""What the Land use view shows, read through :mod:`landuse.storage` (local or ``abfs://``).

Every location is derived from the configured storage root and names that are checked
first: a county is a :func:`landuse.storage.safe_name`, a pair of years is ``YYYY-YYYY``, a
report file must be one the report itself lists in ``summary.json``, and the URLs found in
a report's tables (tile images, NAIP scenes) must lie under the allowed roots. Nothing here
returns a storage URL's credentials: they stay in the server's environment.

Map layers are warped to Web Mercator (the map's projection) so that they line up exactly
with each other; NAIP scenes become one cached quicklook each.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

from landuse import places, storage
from landuse.change.run import SUMMARY, change_url
from landuse.raster import open_raster, read_checked

_PAIR = re.compile(r"^([0-9]{4})-([0-9]{4})\Z")
_TILE_ID = re.compile(r"^\d{4,6}_-?\d{1,9}_-?\d{1,9}\Z")
_LAYER = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}\Z")
WEB_MERCATOR = CRS.from_epsg(3857)
QUICKLOOK_PX = 1600  # long side of a scene's quicklook before warping
MAX_LAYER_PX = 2048  # long side of a warped map layer
TILE_IMAGE_PX = 128  # a tile without a chip, cut from its scene
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".tif": "image/tiff",
               ".geojson": "application/geo+json", ".json": "application/json",
               ".parquet": "application/vnd.apache.parquet", ".md": "text/markdown"}


class NotFound(LookupError):
    """Nothing of that name under the storage root (the message says what was asked for)."""


@dataclass(frozen=True)
class Report:
    """One published change report: where it is and what its summary says."""

    root: str
    county: str
    year_a: int
    year_b: int
    url: str
    summary: dict[str, Any]

    @property
    def pair(self) -> str:
        """The years as they appear in the report's folder name."""
        return f"{self.year_a}-{self.year_b}"


def parse_pair(pair: str) -> tuple[int, int]:
    """``(A, B)`` from ``"A-B"``.

    Raises:
        ValueError: not two four-digit years with A before B.
    """
    match = _PAIR.fullmatch(pair)
    if not match or int(match[1]) >= int(match[2]):
        raise ValueError(f"years {pair!r} are not of the form A-B with A before B (2010-2016)")
    return int(match[1]), int(match[2])


def open_report(root: str, county: str, pair: str) -> Report:
    """The published report of ``county`` and ``pair`` under ``root``.

    Raises:
        ValueError: a county or pair that is not a valid name.
        NotFound: no whole report there (``summary.json`` is its commit marker).
    """
    storage.safe_name(county)
    year_a, year_b = parse_pair(pair)
    url = change_url(root, county, year_a, year_b)
    marker = storage.join(url, SUMMARY)
    if not storage.exists(marker):
        raise NotFound(f"no change report for {county} {pair}")
    summary = json.loads(storage.read_bytes(marker))
    return Report(root, county, year_a, year_b, url, summary)


def list_reports(root: str) -> list[dict[str, Any]]:
    """Every published change report under ``root``, with its headline figures."""
    out = []
    for marker in storage.glob(storage.join(root, "change", "county=*", "*", SUMMARY)):
        county_dir, pair = marker.rsplit("/", 3)[1:3]
        county = county_dir.removeprefix("county=")
        try:
            report = open_report(root, county, pair)
        except (ValueError, NotFound):
            continue  # a folder this view did not write: skip it rather than fail the list
        out.append(headline(report))
    return sorted(out, key=lambda r: (r["county"], r["year_a"], r["year_b"]))


def headline(report: Report) -> dict[str, Any]:
    """The figures a list of reports shows (whatever of them the summary holds)."""
    s = report.summary
    return {"county": report.county, "year_a": report.year_a, "year_b": report.year_b,
            "pair": report.pair,
            **{k: s[k] for k in ("reference", "tiles", "compared", "newly_developed",
                                 "changed", "uncertain") if k in s}}


def public_summary(report: Report) -> dict[str, Any]:
    """The summary without the server's storage locations (the browser needs none)."""
    return dict(scrub(report.summary))


def scrub(value: Any) -> Any:
    """``value`` (JSON-like) without strings that name a storage location."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not _is_location(v)}
    if isinstance(value, list):
        return [scrub(v) for v in value if not _is_location(v)]
    return value


def _is_location(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~")) or "://" in value)


def report_file(report: Report, name: str) -> tuple[bytes, str]:
    """A file the report lists in its summary, and its media type.

    Raises:
        NotFound: ``name`` is not one of the report's files (this is what keeps a request
            inside the report folder: no other name is ever joined onto a path).
    """
    listed = {*report.summary.get("files", []), SUMMARY}
    if name not in listed:
        raise NotFound(f"{name!r} is not a file of the {report.county} {report.pair} report")
    ext = os.path.splitext(name)[1]
    return storage.read_bytes(storage.join(report.url, name)), MEDIA_TYPES.get(
        ext, "application/octet-stream")


# --- map layers -------------------------------------------------------------------------


def layers(report: Report) -> list[dict[str, Any]]:
    """The report's paletted maps (every ``.tif`` it lists): name, description, legend and
    WGS84 bounds, in the order a map shows them (change last, on top)."""
    out = []
    for name in sorted(f for f in report.summary.get("files", []) if f.endswith(".tif")):
        stem = name.removesuffix(".tif")
        with MemoryFile(report_file(report, name)[0]) as mem, mem.open() as src:
            tags = src.tags(1)
            colours = src.colormap(1) if src.count == 1 else {}
            legend = [{"name": tags[f"CLASS_{i}"], "colour": "#{:02x}{:02x}{:02x}".format(
                *colours[i][:3])} for i in sorted(colours) if f"CLASS_{i}" in tags]
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            out.append({"name": stem, "kind": stem.split("_epsg", 1)[0],
                        "description": src.tags().get("TIFFTAG_IMAGEDESCRIPTION", stem),
                        "legend": legend, "bounds": [[south, west], [north, east]]})
    return sorted(out, key=lambda layer: (layer["kind"] == "change", layer["name"]))


def layer_png(report: Report, name: str) -> bytes:
    """A paletted map of the report warped to Web Mercator, as an RGBA PNG (no data clear).

    Raises:
        NotFound: not a map of the report.
    """
    if not _LAYER.fullmatch(name):
        raise NotFound(f"{name!r} is not a map layer name")
    with MemoryFile(report_file(report, f"{name}.tif")[0]) as mem, mem.open() as src:
        codes = src.read(1)
        colours = src.colormap(1)
        lut = np.zeros((256, 4), dtype=np.uint8)
        for i, rgba in colours.items():
            lut[i] = rgba
        lut[int(src.nodata or 0), 3] = 0
        rgba = np.moveaxis(lut[codes], -1, 0)
        return warp_png(rgba, src.crs, src.transform, Resampling.nearest)[0]


def warp_png(bands: np.ndarray, crs: CRS, transform: Any, resampling: Resampling,
              max_zoom: float = 8.0, fmt: str = "PNG") -> tuple[bytes, list[list[float]]]:
    """RGBA bands warped to Web Mercator: the image (``fmt``) and its
    [[south, west], [north, east]]."""
    _, height, width = bands.shape
    left = transform.c
    top = transform.f
    right, bottom = left + transform.a * width, top + transform.e * height
    dst_transform, dst_w, dst_h = calculate_default_transform(
        crs, WEB_MERCATOR, width, height, left=left, bottom=bottom, right=right, top=top)
    # Small rasters (one pixel per tile) get more pixels so that warped cells stay square.
    zoom = max(1.0, min(max_zoom, MAX_LAYER_PX / max(dst_w, dst_h)))
    dst_w, dst_h = math.ceil(dst_w * zoom), math.ceil(dst_h * zoom)
    dst_transform = dst_transform * dst_transform.scale(1 / zoom)
    out = np.zeros((4, dst_h, dst_w), dtype=np.uint8)
    for i in range(4):
        reproject(bands[i], out[i], src_transform=transform, src_crs=crs,
                  dst_transform=dst_transform, dst_crs=WEB_MERCATOR, resampling=resampling,
                  src_nodata=None, dst_nodata=0)
    west, north = dst_transform.c, dst_transform.f
    east, south = west + dst_transform.a * dst_w, north + dst_transform.e * dst_h
    w, s, e, n = transform_bounds(WEB_MERCATOR, "EPSG:4326", west, south, east, north)
    buf = io.BytesIO()
    Image.fromarray(np.moveaxis(out, 0, -1), "RGBA").save(buf, format=fmt, quality=80)
    return buf.getvalue(), [[s, w], [n, e]]


# --- tiles --------------------------------------------------------------------------------


def _tiles(report: Report) -> pd.DataFrame:
    if "tiles.parquet" not in report.summary.get("files", []):
        raise NotFound(f"the {report.county} {report.pair} report has no tile table")
    frame = storage.read_parquet(storage.join(report.url, "tiles.parquet")).to_pandas()
    return frame.set_index("tile_id", drop=False)


def _tile_row(report: Report, tile_id: str) -> pd.Series:
    if not _TILE_ID.fullmatch(tile_id):
        raise NotFound(f"{tile_id!r} is not a tile id")
    tiles = _tiles(report)
    if tile_id not in tiles.index:
        raise NotFound(f"tile {tile_id} is not in the {report.county} {report.pair} report")
    return tiles.loc[tile_id]


def tile_record(report: Report, tile_id: str) -> dict[str, Any]:
    """Everything the report's tile table holds about one tile, without storage URLs;
    ``images`` says which years have a tile image to show."""
    row = _tile_row(report, tile_id)
    record = scrub({str(k): json_value(v) for k, v in row.items()})
    record["images"] = {which: isinstance(row.get(f"image_url_{which}"), str)
                        or _scene_tile(report, tile_id, which) is not None
                        for which in ("a", "b")}
    return record


def tile_image(report: Report, tile_id: str, which: str) -> tuple[bytes, str]:
    """The image of one tile in year A (``which="a"``) or B, as PNG/JPEG bytes.

    Raises:
        NotFound: no such tile or no image for that year.
        PermissionError: the table names an image outside the storage root.
    """
    if which not in ("a", "b"):
        raise NotFound(f"{which!r} is not a year of the report (a or b)")
    url = _tile_row(report, tile_id).get(f"image_url_{which}")
    if not isinstance(url, str):
        # Tiling writes no chips unless asked: the tile is cut from its scene.
        place = _scene_tile(report, tile_id, which)
        if place is None:
            raise NotFound(f"tile {tile_id} has no image in year {which.upper()}")
        return _cut_from_scene(*place), "image/png"
    _inside(url, "tile image", [report.root])
    ext = os.path.splitext(url)[1].lower()
    if ext in (".png", ".jpg", ".jpeg"):
        return storage.read_bytes(url), MEDIA_TYPES.get(ext, "image/jpeg")
    with MemoryFile(storage.read_bytes(url)) as mem, mem.open() as src:
        rgb = src.read(indexes=[1, 2, 3] if src.count >= 3 else [1, 1, 1])
    buf = io.BytesIO()
    Image.fromarray(np.moveaxis(rgb.astype(np.uint8), 0, -1)).save(buf, format="PNG")
    return buf.getvalue(), "image/png"


def _scene_tile(report: Report, tile_id: str,
                which: str) -> tuple[str, tuple[float, float, float, float]] | None:
    """The scene and bounds of a tile in year A or B, from that year's tile manifest."""
    from landuse.tiling import manifest_url

    url = manifest_url(report.root, report.county, report.year_a if which == "a"
                       else report.year_b)
    if not storage.exists(url):
        return None
    m = storage.read_parquet(url).select(
        ["tile_id", "scene_url", "minx", "miny", "maxx", "maxy"]).to_pandas()
    rows = m[m["tile_id"] == tile_id]
    if rows.empty or not isinstance(rows["scene_url"].iloc[0], str):
        return None
    r = rows.iloc[0]
    return str(r["scene_url"]), (float(r["minx"]), float(r["miny"]), float(r["maxx"]),
                                 float(r["maxy"]))


def _cut_from_scene(scene_url: str, bounds: tuple[float, float, float, float]) -> bytes:
    """A tile's RGB pixels read from its scene as tiling reads them, as PNG."""
    from landuse.tiling import read_tile

    _inside(scene_url, "scene", None)
    with open_raster(scene_url) as src:
        rgb = read_tile(src, scene_url, bounds, ["red", "green", "blue"], TILE_IMAGE_PX)
    buf = io.BytesIO()
    Image.fromarray(np.moveaxis(rgb, 0, -1)).save(buf, format="PNG")
    return buf.getvalue()


def _inside(url: str, what: str, roots: list[str] | None) -> None:
    """Refuse a location from a report's tables that lies outside the allowed roots."""
    try:
        places.check_location(url, what, roots=roots)
    except ValueError as err:
        raise PermissionError(f"the report names a {what} outside the storage root") from err


def json_value(value: Any) -> Any:
    """A table cell as plain JSON: NaN as null, numpy scalars as Python ones, floats to 4
    places."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else round(float(value), 4)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if value is None or value is pd.NA:
        return None
    return value if isinstance(value, (str, int, bool)) else str(value)


# --- NAIP quicklooks ----------------------------------------------------------------------


def scenes(report: Report) -> list[str]:
    """The NAIP scenes of year B that the report's tiles were cut from."""
    manifest = storage.join(report.root, "naip", report.county, str(report.year_b),
                            "manifest.parquet")
    if not storage.exists(manifest):
        return []
    frame = storage.read_parquet(manifest).to_pandas()
    if "scene_url" not in frame:
        return []
    return sorted(frame["scene_url"].dropna().unique())


def quicklook(scene_url: str, cache_dir: str | None = None) -> tuple[bytes, list[list[float]]]:
    """A scene's RGB quicklook warped to Web Mercator (WebP with transparency, a tenth of
    the PNG's size), rendered once and then cached
    (``cache_dir``, default ``LANDUSE_VIEW_CACHE`` or a folder in the system's temp).

    Raises:
        PermissionError: the scene lies outside the allowed roots (:mod:`landuse.places`).
    """
    _inside(scene_url, "scene", None)
    folder = cache_dir or os.environ.get("LANDUSE_VIEW_CACHE") or os.path.join(
        tempfile.gettempdir(), "landuse-view-cache")
    key = hashlib.sha256(f"{scene_url}|{QUICKLOOK_PX}".encode()).hexdigest()[:32]
    png_path, meta_path = (os.path.join(folder, f"{key}{ext}") for ext in (".webp", ".json"))
    if os.path.exists(meta_path) and os.path.exists(png_path):
        with open(png_path, "rb") as f, open(meta_path) as m:
            return f.read(), json.load(m)["bounds"]
    with open_raster(scene_url) as src:
        factor = max(1.0, max(src.width, src.height) / QUICKLOOK_PX)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        rgb = read_checked(src, scene_url, indexes=[1, 2, 3] if src.count >= 3 else [1, 1, 1],
                           out_shape=(3, *shape), resampling=Resampling.average)
        transform = src.transform * src.transform.scale(src.width / shape[1],
                                                        src.height / shape[0])
        crs = src.crs
    alpha = np.where(rgb.any(axis=0), 255, 0).astype(np.uint8)  # NAIP's no data is black
    bands = np.concatenate([_stretch(rgb), alpha[None]])
    png, bounds = warp_png(bands, crs, transform, Resampling.bilinear, max_zoom=1.0,
                            fmt="WEBP")
    # The meta file goes last: a reader that finds it finds the whole quicklook.
    storage.write_bytes(png_path, png)
    storage.write_bytes(meta_path, json.dumps({"scene": scene_url, "bounds": bounds}).encode())
    return png, bounds


def _stretch(rgb: np.ndarray) -> np.ndarray:
    """8-bit display values: 2-98 % stretch per band for other than 8-bit imagery."""
    if rgb.dtype == np.uint8:
        return rgb
    out = np.zeros(rgb.shape, dtype=np.uint8)
    for i, band in enumerate(rgb.astype(np.float64)):
        valid = band[band > 0]
        lo, hi = np.percentile(valid, (2, 98)) if valid.size else (0.0, 1.0)
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    return out


# --- review mode ---------------------------------------------------------------------------

# What the review page shows of each queued tile (whatever of these the tile table has).
REVIEW_COLUMNS = ("a_class", "a_group", "a_confidence", "b_class", "b_group", "b_confidence",
                  "ref_group", "transition", "p_no_change", "embedding_distance")


def review_view(report: Report, user: str) -> dict[str, Any]:
    """What the review page needs: the queue (each tile's reason, the model's calls, the
    user's latest answer and the tile's verdict), the user's answers, the review's figures
    and the choices an answer may take."""
    from landuse import labels, review

    tiles = _tiles(report).reset_index(drop=True)
    answers = review.read_answers(report.url)
    mine = review.latest(answers[answers["user"] == user]).set_index("tile_id")
    verdicts = review.verdicts(answers).set_index("tile_id")
    rows = tiles.set_index("tile_id")
    shown = [c for c in REVIEW_COLUMNS if c in rows]
    queue = []
    for q in review.queue(tiles).itertuples():
        tile_id = str(q.tile_id)
        entry: dict[str, Any] = {"tile_id": tile_id, "reason": q.reason,
                                 "reason_text": review.FLAG_TEXT[str(q.reason)]}
        entry.update({c: json_value(rows.at[tile_id, c]) for c in shown})
        entry["answer"] = _answer(mine, tile_id)
        entry["verdict"] = (str(verdicts.at[tile_id, "verdict"]) if tile_id in verdicts.index
                            else None)
        queue.append(entry)
    return {"county": report.county, "year_a": report.year_a, "year_b": report.year_b,
            "pair": report.pair, "user": user, "queue": queue,
            "answered": sum(1 for e in queue if e["answer"]),
            "figures": scrub(review.figures(tiles, answers)),
            "answers": [{"value": a, "text": review.ANSWER_TEXT[a]} for a in review.ANSWERS],
            "classes": list(labels.CLASSES)}


def _answer(mine: pd.DataFrame, tile_id: str) -> dict[str, Any] | None:
    """A user's latest answer on a tile, as the page shows it (None if not answered)."""
    if tile_id not in mine.index:
        return None
    row = mine.loc[tile_id]
    return {k: json_value(row[k]) for k in ("answer", "class_a", "class_b", "at")}


def record_review(report: Report, user: str, body: Any) -> dict[str, Any]:
    """Store one answer of ``user`` on the report (``body``: ``tile_id``, ``answer``,
    optional ``class_a``/``class_b``), made with the report's model.

    Raises:
        landuse.review.ReviewError: a body that is not such an object, or an answer that
            does not fit the report (the message says what).
    """
    from landuse import review

    if not isinstance(body, dict):
        raise review.ReviewError("the answer must be a JSON object with tile_id and answer")
    unknown = set(body) - {"tile_id", "answer", "class_a", "class_b"}
    if unknown:
        raise review.ReviewError(f"unknown fields {sorted(unknown)}")
    fields = {k: body.get(k) for k in ("tile_id", "answer", "class_a", "class_b")}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise review.ReviewError(f"{key} must be a string")
        if key in ("tile_id", "answer") and not value:
            raise review.ReviewError(f"{key} is missing")
    model = report.summary.get("model_b")
    entry = review.record(report.url, _tiles(report), user=user,
                          tile_id=str(fields["tile_id"]), answer=str(fields["answer"]),
                          class_a=fields["class_a"] or None, class_b=fields["class_b"] or None,
                          model_id=str(model) if model else None)
    return dict(scrub(entry))
