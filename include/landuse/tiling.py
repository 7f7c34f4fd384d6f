"""Cut NAIP scenes into labelled tiles and write one manifest per county and year.

The tile grid is anchored to multiples of the tile size in the scene's projected CRS, so a
tile id (``{epsg}_{col}_{row}``) names the same ground in every NAIP vintage: change
detection compares tiles by id. Each tile is read with a windowed read (a county never has
to fit in memory) by :func:`read_tile` and resampled to ``tile_px`` pixels; trainable tiles
(every tile with ``chips='all'``) are written as PNG chips for training, while scoring reads
the same windows from the scenes with the same function (the manifest holds each tile's scene
and bounds). Labels come from NLCD reprojected once per scene onto a label grid aligned with
the tiles.

A county-year is committed by its manifest: tiles are written first, the manifest last and
atomically, and both are deterministic, so a failed run leaves no manifest and a rerun
writes the same bytes. The manifest records the inputs it was made from (scenes and their
sizes, NLCD source, county, tiling config); a county-year whose committed manifest records
the same inputs is finished, whatever the orchestrator remembers, and is not tiled again.

Analysts' reviews of change reports (:func:`landuse.review.reviewed_labels`) label tiles
beside NLCD (:func:`apply_reviews`): a reviewed tile takes the analyst's class (provenance
``review``; NLCD's label stays in ``label_nlcd``) and is trainable when its imagery is. The
reviews are part of a manifest's inputs: new reviews re-commit the manifest from the tiles
already cut, the same reviews redo nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from affine import Affine
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning
from rasterio.warp import transform as transform_points
from rasterio.windows import Window, from_bounds

from landuse import labels, review, storage
from landuse.counties import County
from landuse.naip import NaipCatalog
from landuse.naip_scene import NaipScene
from landuse.nlcd import NlcdSource, read_labels
from landuse.progress import track
from landuse.raster import RasterError, open_raster, read_checked

log = logging.getLogger(__name__)

Band = Literal["red", "green", "blue", "nir"]
BAND_INDEX: dict[str, int] = {"red": 1, "green": 2, "blue": 3, "nir": 4}


MANIFEST_SCHEMA = pa.schema(
    [
        ("tile_id", pa.string()),
        ("county", pa.string()),
        ("year", pa.int32()),
        ("scene", pa.string()),
        ("scene_url", pa.string()),
        ("scene_date", pa.date32()),
        ("col_off", pa.float64()),
        ("row_off", pa.float64()),
        ("width", pa.float64()),
        ("height", pa.float64()),
        ("minx", pa.float64()),
        ("miny", pa.float64()),
        ("maxx", pa.float64()),
        ("maxy", pa.float64()),
        ("crs", pa.string()),
        ("label", pa.string()),
        ("group", pa.string()),
        ("purity", pa.float32()),
        ("nodata_fraction", pa.float32()),
        ("status", pa.string()),
        ("trainable", pa.bool_()),
        ("note", pa.string()),
        ("image_url", pa.string()),
        ("bands", pa.string()),
        ("synthetic", pa.bool_()),
        # Where ``label`` comes from: "nlcd", "review" (an analyst's class, see
        # apply_reviews) or null (no label). ``label_nlcd`` keeps NLCD's own label, so a
        # review that disagrees with NLCD leaves both in the manifest.
        ("label_source", pa.string()),
        ("label_nlcd", pa.string()),
    ]
)


class TilingConfig(BaseModel):
    """How scenes become tiles and which tiles are good enough to train on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile_size_m: float = Field(224.0, gt=0, le=10_000, description="tile side on the ground, m")
    tile_px: int = Field(224, ge=16, le=4096, description="tile side in output pixels")
    bands: tuple[Band, ...] = Field(
        ("red", "green", "blue"), description="RGB, or RGB plus NIR (stored as a 4th channel)"
    )
    label_cells: int = Field(32, ge=1, le=512, description="label grid cells per tile side")
    purity_threshold: float = Field(
        1.0, gt=0, le=1, description="training tiles need this share in their plurality class"
    )
    max_nodata_fraction: float = Field(
        0.01, ge=0, le=1, description="training tiles may have at most this share of no-data"
    )
    chips: Literal["none", "trainable", "all"] = Field(
        "none", description="which tiles also get a PNG chip: training and scoring read the "
        "scenes, so chips are an export for tools that want images"
    )

    @field_validator("bands")
    @classmethod
    def _rgb_first(cls, bands: tuple[str, ...]) -> tuple[str, ...]:
        if bands not in (("red", "green", "blue"), ("red", "green", "blue", "nir")):
            raise ValueError("bands must be red,green,blue or red,green,blue,nir")
        return bands


_LOOKUP = labels.category_lookup()

# Bump when the same inputs would give other tiles or manifest rows (a new resampling, a new
# column): manifests of an older version are then tiled again.
TILING_VERSION = 3  # 2: open water is a class (trainable); 3: chips per config.chips
INPUTS_KEY = b"landuse.tiling.inputs"


@dataclass(frozen=True)
class LabelStats:
    """A tile's label summary."""

    label: str | None
    purity: float
    unknown_codes: tuple[int, ...]


def label_stats(codes: np.ndarray) -> LabelStats:
    """Plurality label and purity of a block of NLCD codes (0 = no data).

    Purity is the plurality category's share of *all* the tile's label cells, so missing
    labels count against it. Water and ice compete for plurality like classes.
    """
    categories = _LOOKUP[codes]
    counts = np.bincount(categories.ravel(), minlength=10)
    unknown = tuple(int(c) for c in np.unique(codes[categories == labels.UNKNOWN]))
    if counts[: labels.NODATA].sum() == 0:
        return LabelStats(None, 0.0, unknown)
    plurality = int(np.argmax(counts[: labels.NODATA]))
    purity = float(counts[plurality] / codes.size)
    return LabelStats(labels.CATEGORY_NAMES[plurality], purity, unknown)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a (bands, H, W) uint8 array; a 4th band (NIR) is the PNG's 4th channel.

    zlib level 3: about 2.4× faster than Pillow's default 6 for about 15 % larger files
    (measured on NAIP tiles), the better trade for a county's worth of tiles.
    """
    mode = "RGB" if pixels.shape[0] == 3 else "RGBA"
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode).save(
        buf, format="PNG", compress_level=3
    )
    return buf.getvalue()


def tile_window(transform: Affine, bounds: tuple[float, float, float, float]) -> Window:
    """The pixel window of ``bounds`` in a raster with ``transform``.

    Plain arithmetic for a north-up grid (every NAIP scene): rasterio's ``from_bounds`` gets
    the same window through its general (rotation-aware) path at about a third of a
    millisecond a call, a tenth of a county's tiling time beside the reads.
    """
    if transform.b == 0 and transform.d == 0 and transform.a > 0 and transform.e < 0:
        left, bottom, right, top = bounds
        return Window((left - transform.c) / transform.a, (top - transform.f) / transform.e,
                      (right - left) / transform.a, (bottom - top) / transform.e)
    return from_bounds(*bounds, transform=transform)


def read_tile(
    src: Any, url: str, bounds: tuple[float, float, float, float], bands: Iterable[str],
    tile_px: int,
) -> np.ndarray:
    """The (bands, tile_px, tile_px) uint8 pixels of the tile covering ``bounds``.

    The one window read: training, scoring and change read tiles with it, and exported
    chips are cut by it, so a chip is byte for byte the tile a model trained and scored on.
    Outside the scene is filled with its no-data value (0 when it has none).

    Raises:
        RasterError: the scene's data is corrupt or truncated.
    """
    indexes = [BAND_INDEX[b] for b in bands]
    window = tile_window(src.transform, bounds)
    # A boundless read goes through a VRT per call (about 5x slower, and on blob storage new
    # requests each time); inside the scene a plain read gives the same bytes.
    inside = (window.col_off >= 0 and window.row_off >= 0
              and window.col_off + window.width <= src.width
              and window.row_off + window.height <= src.height)
    with warnings.catch_warnings():  # NAIP's 4th band is NIR, not an alpha: nothing is lost
        warnings.simplefilter("ignore", NodataShadowWarning)
        return read_checked(
            src,
            url,
            indexes=indexes,
            window=window,
            out_shape=(len(indexes), tile_px, tile_px),
            resampling=Resampling.bilinear,
            boundless=not inside,
            fill_value=src.nodata if src.nodata is not None else 0,
        )


def chip_rgb(pixels: np.ndarray) -> np.ndarray:
    """A tile read by :func:`read_tile` as the (H, W, 3) RGB array a decoded chip gives."""
    return np.ascontiguousarray(pixels[:3].transpose(1, 2, 0))


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``size`` metres aligned to multiples of ``size`` in a projected CRS."""

    size: float
    col0: int
    row0: int  # row index counts northwards: tile row r spans y in [r*size, (r+1)*size)
    ncols: int
    nrows: int

    @classmethod
    def inside(cls, bounds: tuple[float, float, float, float], size: float) -> TileGrid:
        """All whole tiles inside ``bounds`` (left, bottom, right, top)."""
        left, bottom, right, top = bounds
        col0, row0 = math.ceil(left / size - 1e-9), math.ceil(bottom / size - 1e-9)
        ncols = max(0, math.floor(right / size + 1e-9) - col0)
        nrows = max(0, math.floor(top / size + 1e-9) - row0)
        return cls(size, col0, row0, ncols, nrows)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Extent of the whole grid."""
        s = self.size
        return (
            self.col0 * s,
            self.row0 * s,
            (self.col0 + self.ncols) * s,
            (self.row0 + self.nrows) * s,
        )

    def label_transform(self, cells: int) -> Affine:
        """Transform of a label grid with ``cells`` × ``cells`` cells per tile, north up."""
        left, _, _, top = self.bounds
        return Affine(self.size / cells, 0, left, 0, -self.size / cells, top)

    def tiles(self) -> Iterable[tuple[int, int, tuple[float, float, float, float]]]:
        """(col, row, bounds) for every tile, north to south, west to east."""
        s = self.size
        for row in range(self.row0 + self.nrows - 1, self.row0 - 1, -1):
            for col in range(self.col0, self.col0 + self.ncols):
                yield col, row, (col * s, row * s, (col + 1) * s, (row + 1) * s)


def _centres_in_bbox(
    crs: Any, tiles: list[tuple[int, int, tuple[float, float, float, float]]], bbox: tuple
) -> list[bool]:
    xs = [(b[0] + b[2]) / 2 for _, _, b in tiles]
    ys = [(b[1] + b[3]) / 2 for _, _, b in tiles]
    lons, lats = transform_points(crs, "EPSG:4326", xs, ys)
    west, south, east, north = bbox
    return [west <= x <= east and south <= y <= north for x, y in zip(lons, lats, strict=True)]


def tile_scene(
    scene: NaipScene,
    county: County,
    year: int,
    config: TilingConfig,
    tiles_url: str,
    nlcd_url: str | None,
    skip_ids: set[str] | None = None,
    nlcd_crs: str | None = None,
) -> list[dict[str, Any]]:
    """Tile one scene: return manifest rows (one per tile), writing a PNG chip for each
    trainable tile when ``config.chips`` is 'trainable' (each tile with imagery: 'all').

    Raises:
        RasterError: the scene is unreadable, has no CRS, has too few bands, or the NLCD
            raster does not overlap it.
    """
    skip_ids = skip_ids if skip_ids is not None else set()
    rows: list[dict[str, Any]] = []
    with open_raster(scene.url) as src:
        need = max(BAND_INDEX[b] for b in config.bands)
        if src.count < need or src.dtypes[0] != "uint8":
            raise RasterError(
                f"scene {scene.url} has {src.count} {src.dtypes[0]} band(s); NAIP tiles of "
                f"bands {','.join(config.bands)} need at least {need} uint8 bands"
            )
        if not src.crs.is_projected:
            raise RasterError(f"scene {scene.url} is in {src.crs}, not a projected (metre) CRS")
        grid = TileGrid.inside(tuple(src.bounds), config.tile_size_m)
        tiles = list(grid.tiles())
        if not tiles:
            log.warning("scene %s is smaller than one %s m tile", scene.url, config.tile_size_m)
            return rows
        keep = _centres_in_bbox(src.crs, tiles, county.bbox)
        codes = None
        if nlcd_url:
            c = config.label_cells
            codes = read_labels(nlcd_url, src.crs, grid.label_transform(c),
                                (grid.nrows * c, grid.ncols * c), nlcd_crs)
        nodata = src.nodata if src.nodata is not None else 0
        crs = src.crs.to_string()
        epsg = src.crs.to_epsg() or 0
        todo = [t for t, k in zip(tiles, keep, strict=True) if k]
        for col, row, bounds in track(todo, total=len(todo), desc=f"{county.name} {scene.name}"):
            tile_id = f"{epsg}_{col}_{row}"
            if tile_id in skip_ids:
                continue  # already cut from an overlapping scene of this county-year
            skip_ids.add(tile_id)
            window = tile_window(src.transform, bounds)
            pixels = read_tile(src, scene.url, bounds, config.bands, config.tile_px)
            nodata_fraction = float(np.mean(np.all(pixels == nodata, axis=0)))
            row_dict: dict[str, Any] = {
                "tile_id": tile_id,
                "county": county.name,
                "year": year,
                "scene": scene.name,
                "scene_url": scene.url,
                "scene_date": scene.date,
                "col_off": round(window.col_off, 3),
                "row_off": round(window.row_off, 3),
                "width": round(window.width, 3),
                "height": round(window.height, 3),
                "minx": bounds[0],
                "miny": bounds[1],
                "maxx": bounds[2],
                "maxy": bounds[3],
                "crs": crs,
                "nodata_fraction": round(nodata_fraction, 4),
                "bands": ",".join(config.bands),
                "synthetic": county.synthetic,
            }
            row_dict.update(_label_fields(codes, grid, col, row, config, nodata_fraction))
            if nodata_fraction >= 1.0:
                row_dict.update(status="empty", trainable=False, note="no imagery", image_url=None)
            elif config.chips == "all" or (config.chips == "trainable"
                                           and row_dict["trainable"]):
                url = storage.join(tiles_url, f"{tile_id}.png")
                storage.write_bytes(url, encode_png(pixels))
                row_dict["image_url"] = url
            else:
                row_dict["image_url"] = None  # read from the scene; no chip needed
            rows.append(row_dict)
    return rows


def _label_fields(
    codes: np.ndarray | None,
    grid: TileGrid,
    col: int,
    row: int,
    config: TilingConfig,
    nodata_fraction: float,
) -> dict[str, Any]:
    if codes is None:
        return dict(
            label=None, group=None, purity=None, status="ok", trainable=False, note="no NLCD labels"
        )
    c = config.label_cells
    r0 = (grid.row0 + grid.nrows - 1 - row) * c
    c0 = (col - grid.col0) * c
    stats = label_stats(codes[r0 : r0 + c, c0 : c0 + c])
    fields: dict[str, Any] = dict(
        label=stats.label,
        group=labels.CLASS_TO_GROUP.get(stats.label or ""),
        purity=round(stats.purity, 4),
        status="ok",
        trainable=False,
        note=None,
    )
    if stats.unknown_codes:
        fields.update(
            status="skipped",
            note=f"unknown NLCD code(s) {', '.join(map(str, stats.unknown_codes))}",
        )
    elif stats.label is None:
        fields["note"] = "no NLCD data"
    elif stats.label not in labels.CLASSES:
        fields["note"] = f"{stats.label.lower()} is not a land-use class"
    elif stats.purity < config.purity_threshold:
        fields["note"] = f"purity {stats.purity:.3f} < {config.purity_threshold}"
    elif nodata_fraction > config.max_nodata_fraction:
        fields["note"] = f"no-data {nodata_fraction:.3f} > {config.max_nodata_fraction}"
    else:
        fields["trainable"] = True
    return fields


def county_prefix(root: str, county: str, year: int) -> str:
    """Folder of one county-year's tiles and manifest under the storage root."""
    return storage.join(root, "naip", storage.safe_name(county), str(year))


def manifest_url(root: str, county: str, year: int) -> str:
    """The manifest that commits one county-year."""
    return storage.join(county_prefix(root, county, year), "manifest.parquet")


@dataclass(frozen=True)
class CountyYear:
    """What tiling one county-year produced."""

    county: str
    year: int
    manifest_url: str
    tiles: int
    trainable: int
    scenes: tuple[str, ...]
    reviewed: int = 0  # tiles labelled by analysts' reviews
    disagreed: int = 0  # of those, tiles whose NLCD label is another class


def tiling_inputs(
    county: County,
    year: int,
    scenes: list[NaipScene],
    config: TilingConfig,
    nlcd_url: str | None,
    nlcd_crs: str | None = None,
) -> dict[str, Any]:
    """What a county-year's tiles are made from, as recorded in its manifest.

    A scene is named by URL and size: a re-released or repaired scene of the same name has
    another size in practice, and a size costs one metadata request, not a read.
    """
    return {
        "version": TILING_VERSION,
        "county": county.name,
        "bbox": list(county.bbox),
        "year": year,
        "config": config.model_dump(mode="json"),
        "nlcd": nlcd_url,
        **({"nlcd_crs": nlcd_crs} if nlcd_crs else {}),  # absent: earlier manifests still match
        "scenes": [{"url": s.url, "bytes": storage.size(s.url)} for s in scenes],
    }


def committed_manifest(url: str, inputs: dict[str, Any]) -> pa.Table | None:
    """The manifest at ``url`` when it was committed from exactly ``inputs``, else None."""
    if not storage.exists(url):
        return None
    table = storage.read_parquet(url)
    recorded = (table.schema.metadata or {}).get(INPUTS_KEY)
    return table if recorded == _encode_inputs(inputs) else None


def _encode_inputs(inputs: dict[str, Any]) -> bytes:
    return json.dumps(inputs, sort_keys=True, default=str).encode()


def _committed_tiles(url: str, inputs: dict[str, Any]) -> tuple[pa.Table | None, bytes | None]:
    """The manifest at ``url`` and its recorded inputs when its *tiles* were cut from
    ``inputs`` (whatever reviews labelled them), else ``(None, None)``."""
    if not storage.exists(url):
        return None, None
    table = storage.read_parquet(url)
    recorded = (table.schema.metadata or {}).get(INPUTS_KEY)
    if recorded is None:
        return None, None
    tiled = {k: v for k, v in json.loads(recorded).items() if k != REVIEWS_INPUT}
    return (table, recorded) if _encode_inputs(tiled) == _encode_inputs(inputs) else (None, None)


REVIEWS_INPUT = "reviews"
REVIEWED_COLUMNS = ["tile_id", "label"]


def reviews_input(reviewed: pd.DataFrame) -> dict[str, Any] | None:
    """What a county-year's reviewed labels add to its manifest's inputs: their number and a
    SHA-256 of their (tile, class) pairs; None without reviews (earlier manifests match)."""
    if reviewed.empty:
        return None
    pairs = sorted(zip(reviewed["tile_id"].astype(str), reviewed["label"].astype(str),
                       strict=True))
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    return {"tiles": len(pairs), "sha256": digest}


def apply_reviews(table: pa.Table, reviewed: pd.DataFrame,
                  max_nodata_fraction: float = 0.01) -> pa.Table:
    """A county-year's manifest with analysts' classes as labels (idempotent).

    Every row a review labels gets the review's class as ``label`` (and its ``group``),
    ``label_source`` "review", and is trainable when its imagery is usable (not empty, no-data
    at most ``max_nodata_fraction``) whatever NLCD said; ``label_nlcd`` keeps NLCD's label
    and ``note`` NLCD's reason for leaving the tile out of training. Other rows get
    ``label_source`` "nlcd" where NLCD labelled them, null otherwise. Labels of an earlier
    application are undone first, so a manifest can be given new reviews; a manifest
    written before reviews existed (without the provenance columns) is read too.

    Args:
        table: manifest rows of one county-year (from tiling, or a committed manifest).
        reviewed: ``tile_id`` and ``label`` of that county-year's reviewed tiles (see
            :func:`landuse.review.reviewed_labels`); ids not in the manifest are ignored.
        max_nodata_fraction: the tiling config's limit on no-data for training tiles.

    Returns:
        The manifest in :data:`MANIFEST_SCHEMA`, in the same row order.

    Raises:
        ValueError: a reviewed class that is not a land-use class, or two classes for one
            tile.
    """
    missing = sorted(set(REVIEWED_COLUMNS) - set(reviewed.columns))
    if missing:
        raise ValueError(f"reviewed labels lack column(s) {missing}")
    unknown = sorted(set(reviewed["label"]) - set(labels.CLASSES))
    if unknown:
        raise ValueError(f"reviewed labels {unknown} are not land-use classes "
                         f"{list(labels.CLASSES)}")
    if reviewed["tile_id"].duplicated().any():
        dup = sorted(reviewed.loc[reviewed["tile_id"].duplicated(), "tile_id"])[:5]
        raise ValueError(f"reviewed labels give tiles {dup} more than one class")
    classes = dict(zip(reviewed["tile_id"], reviewed["label"], strict=True))
    rows = table.to_pylist()
    for row in rows:
        if row.get("label_source") == "review":  # an earlier review's label: back to NLCD's
            nlcd = row.get("label_nlcd")
            # NLCD made a tile trainable exactly when it gave no reason not to (_label_fields)
            row.update(label=nlcd, group=labels.CLASS_TO_GROUP.get(nlcd or ""),
                       trainable=row.get("note") is None)
        row["label_nlcd"] = row.get("label")
        row["label_source"] = "nlcd" if row.get("label") is not None else None
        klass = classes.get(row["tile_id"])
        if klass is None:
            continue
        nodata = row.get("nodata_fraction")
        usable = row.get("status") != "empty" and (nodata is None
                                                   or nodata <= max_nodata_fraction)
        row.update(label=klass, group=labels.CLASS_TO_GROUP.get(klass), label_source="review",
                   trainable=usable)
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def review_counts(table: pa.Table | pd.DataFrame) -> tuple[int, int]:
    """Tiles of a manifest labelled by reviews, and how many of them NLCD labelled another
    class (0, 0 for a manifest written before reviews)."""
    frame = table if isinstance(table, pd.DataFrame) else table.to_pandas()
    if "label_source" not in frame:
        return 0, 0
    reviewed = frame[frame["label_source"] == "review"]
    nlcd = reviewed.get("label_nlcd", pd.Series(None, index=reviewed.index, dtype=object))
    return len(reviewed), int((nlcd.notna() & (nlcd != reviewed["label"])).sum())


def build_county(
    county: County,
    years: Iterable[int],
    root: str,
    config: TilingConfig | None = None,
    nlcd: str | None = None,
    overwrite: bool = False,
    nlcd_crs: str | None = None,
    reviews: bool = True,
) -> list[CountyYear]:
    """Tile every requested year of a county and commit one manifest per year.

    A year whose manifest is already committed from the same inputs is finished and is not
    tiled again (a rerun after a crash between the commit and the orchestrator noticing it
    redoes nothing), unless ``overwrite``. With ``reviews``, the classes analysts set on the
    county's change reports under ``root`` label their tiles (:func:`apply_reviews`); they
    are inputs too: new reviews re-commit a manifest from its committed tiles (no tile is
    cut again), the same reviews leave it as it is.

    Args:
        county: the county (its NAIP root, bounding box and default NLCD source).
        years: NAIP years; years without scenes are skipped with a warning.
        root: storage root URL for outputs.
        config: tiling options.
        nlcd: NLCD source overriding the county's own ('' for none).
        overwrite: tile again even when a manifest from the same inputs is committed.
        nlcd_crs: the NLCD rasters' true CRS, overriding their embedded one and the
            county's ``nlcd_crs``.
        reviews: label tiles with the classes analysts set in reviews of the county's
            change reports under ``root`` (:func:`landuse.review.reviewed_labels`).

    Raises:
        ValueError: the county has no NAIP scenes in any requested year.
        RasterError: a scene or the NLCD raster is unusable (nothing is committed).
    """
    config = config or TilingConfig()
    storage.safe_name(county.name)
    years = sorted(set(years))
    source_url = county.nlcd if nlcd is None else (nlcd or None)
    source = (NlcdSource.from_url(source_url, nlcd_crs or county.nlcd_crs)
              if source_url else None)
    catalog = NaipCatalog(county.naip)
    scenes = catalog.scenes(years=years, bbox=county.bbox, state=county.state)
    if not scenes:
        raise ValueError(
            f"county {county.name}: no NAIP scenes for years {years} under {county.naip}"
        )
    reviewed_all = (review.reviewed_labels(root, county.name) if reviews
                    else pd.DataFrame(columns=["year", *REVIEWED_COLUMNS]))
    if reviewed_all.attrs.get("conflicts"):
        log.warning("county %s: %d reviewed tile-years left unlabelled: analysts set "
                    "different classes", county.name, reviewed_all.attrs["conflicts"])
    results = []
    for year in years:
        year_scenes = [s for s in scenes if s.year == year]
        if not year_scenes:
            log.warning("county %s: no NAIP scenes for %d, skipped", county.name, year)
            continue
        nlcd_url = source.for_year(year) if source else None
        url = manifest_url(root, county.name, year)
        crs = source.crs if source else None
        inputs = tiling_inputs(county, year, year_scenes, config, nlcd_url, crs)
        reviewed = reviewed_all[reviewed_all["year"] == year]
        reviewed_inputs = reviews_input(reviewed)
        full = {**inputs, **({REVIEWS_INPUT: reviewed_inputs} if reviewed_inputs else {})}
        table, recorded = (None, None) if overwrite else _committed_tiles(url, inputs)
        if table is not None and recorded == _encode_inputs(full):
            log.info("county %s %d: already tiled from the same inputs (%s)", county.name,
                     year, url)
        else:
            if table is None:
                table = _tile_year(county, year, year_scenes, config, nlcd_url, root, crs)
            else:
                log.info("county %s %d: reviews changed; labelling the committed tiles again",
                         county.name, year)
            table = apply_reviews(table, reviewed, config.max_nodata_fraction)
            table = table.replace_schema_metadata({INPUTS_KEY: _encode_inputs(full)})
            storage.write_parquet(url, table)
        unmatched = len(set(reviewed["tile_id"]) - set(table.column("tile_id").to_pylist()))
        if unmatched:
            log.warning("county %s %d: %d reviewed tiles are not in the manifest (another "
                        "tile grid?), ignored", county.name, year, unmatched)
        trainable = sum(bool(t) for t in table.column("trainable").to_pylist())
        n_reviewed, disagreed = review_counts(table)
        log.info("county %s %d: %d tiles, %d trainable, %d labelled by reviews (%d "
                 "disagreeing with NLCD) -> %s", county.name, year, table.num_rows, trainable,
                 n_reviewed, disagreed, url)
        results.append(
            CountyYear(county.name, year, url, table.num_rows, trainable,
                       tuple(s.name for s in year_scenes), n_reviewed, disagreed)
        )
    return results


def _tile_year(
    county: County,
    year: int,
    scenes: list[NaipScene],
    config: TilingConfig,
    nlcd_url: str | None,
    root: str,
    nlcd_crs: str | None,
) -> pa.Table:
    """Tile every scene of one county-year; the manifest table, sorted by tile id."""
    prefix = county_prefix(root, county.name, year)
    for folder in (prefix, storage.join(prefix, "tiles")):  # a crashed attempt's debris
        storage.remove_temporaries(folder)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for scene in scenes:
        rows.extend(
            tile_scene(scene, county, year, config, storage.join(prefix, "tiles"), nlcd_url, seen,
                       nlcd_crs)
        )
    rows.sort(key=lambda r: r["tile_id"])
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def export_chips(manifest: str, dest: str | None = None, which: Literal["trainable", "all"] =
                 "trainable") -> str:
    """Write a committed manifest's tiles as PNG chips, for tools that want images.

    Each chip is cut by :func:`read_tile` (one open per scene, tiles in raster order), so it
    is byte for byte the tile training and scoring read. Chips are written atomically and
    deterministically (a rerun writes the same bytes); ``chips.parquet`` (the manifest's
    rows of the exported tiles, ``image_url`` naming each chip) is written last.

    Args:
        manifest: a county-year's ``manifest.parquet``.
        dest: folder for the chips; default ``tiles/`` beside the manifest.
        which: the trainable tiles, or every tile with imagery.

    Returns:
        The URL of ``chips.parquet``.

    Raises:
        ValueError: the manifest does not record how it was tiled (not tiling's).
        RasterError: a scene cannot be read (nothing is listed).
    """
    table = storage.read_parquet(manifest)
    recorded = (table.schema.metadata or {}).get(INPUTS_KEY)
    if recorded is None:
        raise ValueError(f"manifest {manifest} does not record its tiling (tile size): only "
                         "manifests written by tiling can be cut into chips")
    tile_px = int(json.loads(recorded)["config"]["tile_px"])
    frame = table.to_pandas()
    dest = dest or storage.join(manifest.rsplit("/", 1)[0], "tiles")
    chosen = frame[frame["status"] != "empty"]
    if which == "trainable":
        chosen = chosen[chosen["trainable"].astype(bool)]
    storage.remove_temporaries(dest)
    urls: dict[int, str] = {}
    for scene_url, group in chosen.groupby("scene_url", sort=True):
        bands = str(group["bands"].iloc[0]).split(",")
        with open_raster(str(scene_url)) as src:
            ordered = group.sort_values(["maxy", "minx"], ascending=[False, True])
            for i, t in zip(ordered.index, ordered.itertuples(), strict=True):
                pixels = read_tile(src, str(scene_url), (t.minx, t.miny, t.maxx, t.maxy), bands,
                                   tile_px)
                url = urls[i] = storage.join(dest, f"{t.tile_id}.png")
                storage.write_bytes(url, encode_png(pixels))
    listed = chosen.assign(image_url=[urls[i] for i in chosen.index])
    for column in MANIFEST_SCHEMA.names:  # a manifest written before a column existed
        if column not in listed:
            listed[column] = None
    out = storage.join(dest, "chips.parquet")
    storage.write_parquet(out, pa.Table.from_pandas(listed[MANIFEST_SCHEMA.names],
                                                    schema=MANIFEST_SCHEMA,
                                                    preserve_index=False))
    log.info("%d chips of %s -> %s", len(listed), manifest, dest)
    return out
