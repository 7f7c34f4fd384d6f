"""Synthetic counties: NAIP-like scenes and NLCD-coded labels with known ground truth.

Each synthetic county is a patchwork of parcels, each parcel one land-use class with its
own texture: rooftops and streets for Developed, canopy blobs for Forest, crop rows for
Cultivated, and so on; 4 bands (R, G, B, NIR) with NIR high over vegetation and low over
water, like NAIP. The parcels are a Voronoi partition with classes in set shares or, given
a real NLCD raster as the *layout*, the connected patches of one window of it per county
(real patch shapes, roads and class shares, water included). The matching NLCD raster is
written in CONUS Albers (EPSG:5070) at 30 m, another CRS and resolution than the UTM
imagery, as in reality. A second year can plant known changes (parcels that become
Developed), saved as ground truth for change detection.

Everything written here is named synthetic (file names, county names, GeoTIFF tags).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.warp import reproject, transform, transform_bounds

from landuse import labels, storage

UTM = CRS.from_epsg(26914)
ALBERS = CRS.from_epsg(5070)
_PARCEL_PX = 4  # parcel map cell, in image pixels
_DESCRIPTION = "SYNTHETIC NAIP-like scene made by `landuse synth`; not real imagery"

# Mean R, G, B, NIR per class (and water), loosely after real NAIP values.
_BASE = {
    "Developed": (150, 146, 140, 95),
    "Barren": (196, 182, 158, 150),
    "Forest": (52, 80, 50, 185),
    "Shrub": (128, 122, 88, 140),
    "Herbaceous": (162, 168, 118, 170),
    "Cultivated": (128, 148, 84, 195),
    "Water": (36, 56, 76, 16),
}
_WEIGHTS = {  # share of parcels per class
    "Developed": 0.16,
    "Barren": 0.12,
    "Forest": 0.16,
    "Shrub": 0.14,
    "Herbaceous": 0.16,
    "Cultivated": 0.18,
    "Water": 0.08,
}


@dataclass
class SyntheticCounty:
    """What was generated for one county."""

    name: str
    bbox: tuple[float, float, float, float]
    scenes: dict[int, str] = field(default_factory=dict)
    changed_parcels: int = 0
    changed_tiles_truth: str | None = None


def _res_code(res_m: float) -> str:
    return str(int(res_m)) if float(res_m).is_integer() else f"{round(res_m * 100):03d}"


def quad_name(lon: float, lat: float) -> tuple[str, str]:
    """NAIP quadrangle id and quarter of a point (the inverse of NaipScene.footprint)."""
    lat0, lon0 = math.floor(lat), math.floor(-lon)
    row = int((lat0 + 1 - lat) // 0.125)
    col = int((lon + lon0 + 1) // 0.125)
    cell_north = lat0 + 1 - row * 0.125
    cell_west = -(lon0 + 1) + col * 0.125
    quarter = ("s" if lat < cell_north - 0.0625 else "n") + (
        "e" if lon >= cell_west + 0.0625 else "w"
    )
    return f"{lat0:02d}{lon0:03d}{row * 8 + col + 1:02d}", quarter


def _smooth(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Unit-variance noise with features about ``cell`` pixels across."""
    small = rng.standard_normal((shape[0] // cell + 2, shape[1] // cell + 2)).astype(np.float32)
    big = Image.fromarray(small, mode="F").resize(
        (small.shape[1] * cell, small.shape[0] * cell), Image.Resampling.BILINEAR
    )
    return np.asarray(big)[: shape[0], : shape[1]]


def _parcels(rng: np.random.Generator, shape: tuple[int, int], spacing: int) -> np.ndarray:
    """Voronoi parcel ids on a jittered grid of seeds ``spacing`` cells apart."""
    ny, nx = shape[0] // spacing + 1, shape[1] // spacing + 1
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    seeds_y = (gy + rng.uniform(0.1, 0.9, gy.shape)) * spacing
    seeds_x = (gx + rng.uniform(0.1, 0.9, gx.shape)) * spacing
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    best = np.full(shape, np.inf, dtype=np.float32)
    ids = np.zeros(shape, dtype=np.int32)
    for i, (sy, sx) in enumerate(zip(seeds_y.ravel(), seeds_x.ravel(), strict=True)):
        d = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = d < best
        best[closer] = d[closer]
        ids[closer] = i
    return ids


def _voronoi_parcels(rng: np.random.Generator, shape: tuple[int, int], spacing: int,
                     names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voronoi parcel ids, and per parcel a class index and an NLCD code, the classes in
    their target shares (every class at least once) in random places."""
    parcel_ids = _parcels(rng, shape, spacing)
    n_parcels = int(parcel_ids.max()) + 1
    weights = np.array([_WEIGHTS[n] for n in names])
    quota = np.maximum(1, np.floor(weights / weights.sum() * n_parcels)).astype(int)
    pool = np.repeat(np.arange(len(names)), quota)
    extra = rng.choice(len(names), size=max(0, n_parcels - len(pool)), p=weights / weights.sum())
    parcel_class = rng.permutation(np.concatenate([pool, extra]))[:n_parcels]
    parcel_code = np.array(
        [11 if names[c] == "Water"
         else rng.choice([k for k, v in labels.NLCD_TO_CLASS.items() if v == names[c]])
         for c in parcel_class],
        dtype=np.uint8,
    )
    return parcel_ids, parcel_class, parcel_code


def _class_name(code: int) -> str:
    return "Water" if code == 11 else labels.NLCD_TO_CLASS[int(code)]


def _layout_parcels(url: str, index: int, shape: tuple[int, int],
                    cell_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Parcel ids on a ``shape`` grid of ``cell_m`` cells, and each parcel's NLCD code: the
    connected patches of the ``index``-th window of a real NLCD raster (30 m cells)."""
    from rasterio.windows import Window
    from scipy import ndimage

    from landuse.raster import open_raster, read_checked

    side = math.ceil(max(shape) * cell_m / 30.0)  # NLCD cells under the county
    with open_raster(url) as src:
        per_row, rows = src.width // side, src.height // side
        if index >= per_row * rows:
            raise ValueError(
                f"layout {url}: its {src.width}x{src.height} cells hold {per_row * rows} "
                f"county windows of {side}x{side} cells; ask for fewer or smaller counties")
        r, c = divmod(index, per_row)
        codes = read_checked(src, url, indexes=1, window=Window(c * side, r * side, side, side))
    known = np.isin(codes, [11, *labels.NLCD_TO_CLASS])
    if not known.any():
        raise ValueError(f"layout {url}: window {index} holds no land-cover code")
    # ice, no-data and unknown cells take the nearest land-cover cell's code
    _, (iy, ix) = ndimage.distance_transform_edt(~known, return_indices=True)
    codes = codes[iy, ix]
    pick = (np.arange(shape[0]) * cell_m / 30.0).astype(int)
    fine = codes[np.ix_(pick, (np.arange(shape[1]) * cell_m / 30.0).astype(int))]
    parcel_ids = np.zeros(shape, dtype=np.int32)
    parcel_code: list[int] = []
    for code in np.unique(fine):
        patches, n = ndimage.label(fine == code)
        inside = patches > 0
        parcel_ids[inside] = patches[inside] - 1 + len(parcel_code)
        parcel_code += [int(code)] * n
    return parcel_ids, np.array(parcel_code, dtype=np.uint8)


def _render(
    classes: np.ndarray, parcel_ids: np.ndarray, rng: np.random.Generator, res_m: float
) -> np.ndarray:
    """(4, H, W) uint8 imagery for a per-pixel class-name-index map."""
    names = list(_BASE)
    h, w = classes.shape
    img = np.zeros((4, h, w), dtype=np.float32)
    base = np.array([_BASE[n] for n in names], dtype=np.float32)  # (classes, 4)
    # Per-parcel tint, so parcels of one class differ a little, as real fields do.
    n = int(parcel_ids.max()) + 1
    tint = (rng.normal(1.0, 0.06, size=(n, 1)) * rng.normal(1.0, 0.02, size=(n, 4))).astype(
        np.float32
    )
    img[:] = (base[classes] * tint[parcel_ids]).transpose(2, 0, 1)
    px = 1.0 / res_m  # pixels per metre
    yy, xx = np.mgrid[0:h, 0:w]
    fine = rng.standard_normal((h, w)).astype(np.float32)
    for idx, name in enumerate(names):
        mask = classes == idx
        if not mask.any():
            continue
        if name == "Developed":
            roofs = _smooth(rng, (h, w), max(2, int(10 * px))) > 0.5
            streets = ((xx % max(4, int(60 * px))) < max(2, int(7 * px))) | (
                (yy % max(4, int(80 * px))) < max(2, int(7 * px))
            )
            texture = np.where(roofs, 55.0, 0.0) + fine * 14
            texture = np.where(streets, -75.0, texture)
            img[:, mask] += texture[mask]
        elif name == "Forest":
            canopy = _smooth(rng, (h, w), max(2, int(6 * px))) * 28 + fine * 6
            img[:, mask] += canopy[mask]
        elif name == "Cultivated":
            period = max(3, int(8 * px))
            vertical = parcel_ids % 2 == 0
            rows = np.where(vertical, xx % period, yy % period) < period / 2
            stripe = np.where(rows, 1.0, -1.0)[mask]
            img[:, mask] += np.outer([-18, 14, -6, 45], stripe) + fine[mask] * 5
        elif name == "Shrub":
            dots = (rng.random((h, w)) < 0.12)[mask]
            img[:, mask] += np.where(dots, -45.0, 0.0) + fine[mask] * 9
        elif name == "Water":
            img[:, mask] += _smooth(rng, (h, w), max(2, int(40 * px)))[mask] * 4
        else:  # Barren, Herbaceous: smooth with fine grain
            grain = 13 if name == "Barren" else 7
            img[:, mask] += (_smooth(rng, (h, w), max(2, int(30 * px))) * 8 + fine * grain)[mask]
    return np.clip(img, 1, 255).astype(np.uint8)  # 0 is NAIP's no-data


def _write_geotiff(
    url: str, data: np.ndarray, crs: CRS, tf: Affine, nodata: int | None = None, **tags: Any
) -> None:
    profile = dict(
        driver="GTiff",
        width=data.shape[-1],
        height=data.shape[-2],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=tf,
        nodata=nodata,
        compress="deflate",
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
            dst.update_tags(**tags)
        storage.write_bytes(url, mem.read())


def make_synthetic(
    out: str,
    *,
    counties: int = 3,
    years: tuple[int, ...] = (2010, 2016),
    size_m: float = 3136.0,
    res_m: float = 2.0,
    changes_per_county: int = 4,
    parcel_m: float = 600.0,
    seed: int = 0,
    layout: str | None = None,
) -> list[SyntheticCounty]:
    """Write synthetic counties under ``out``: ``naip/``, ``nlcd/``, ``truth/``, counties.json.

    Args:
        out: output folder or URL.
        counties: how many counties (placed side by side in North Dakota, UTM 14).
        years: NAIP/NLCD years; every year after the first plants new development.
        size_m: scene side in metres (aligned to the 224 m tile grid).
        res_m: imagery ground sample distance in metres.
        changes_per_county: parcels that become Developed in each later year.
        parcel_m: typical parcel size in metres (Voronoi parcels).
        seed: random seed; the same seed writes the same files.
        layout: a real NLCD raster whose land-cover patches become the parcels, one window
            per county in reading order (only its codes are used, not its place or CRS).

    Raises:
        ValueError: bad years, or a layout too small for the counties asked for.
        RasterError: the layout cannot be read.
    """
    if not years or sorted(years) != list(years) or len(set(years)) != len(years):
        raise ValueError(f"years must be increasing and distinct, got {years}")
    names = list(_BASE)
    developed = names.index("Developed")
    convertible = [
        names.index(n) for n in ("Barren", "Forest", "Shrub", "Herbaceous", "Cultivated")
    ]
    side_px = round(size_m / res_m)
    side_px -= side_px % _PARCEL_PX
    made: list[SyntheticCounty] = []
    codes_by_year: dict[int, list[tuple[np.ndarray, Affine]]] = {y: [] for y in years}
    for i in range(counties):
        rng = np.random.default_rng([seed, i])
        name = f"synthetic-county-{i + 1}"
        lon, lat = -98.0 + 0.03125 + 0.0625 * i, 46.03125  # centre of a NAIP quarter quad
        (cx,), (cy,) = transform("EPSG:4326", UTM, [lon], [lat])
        x0 = math.floor(cx / 224.0) * 224.0 - 224.0 * math.floor(size_m / 448.0)
        y1 = math.floor(cy / 224.0) * 224.0 + 224.0 * math.ceil(size_m / 448.0)
        tf = Affine(res_m, 0, x0, 0, -res_m, y1)
        bounds = (x0, y1 - side_px * res_m, x0 + side_px * res_m, y1)
        county = SyntheticCounty(name, tuple(transform_bounds(UTM, "EPSG:4326", *bounds)))
        coarse = (side_px // _PARCEL_PX, side_px // _PARCEL_PX)
        if layout:
            parcel_ids, parcel_code = _layout_parcels(layout, i, coarse, res_m * _PARCEL_PX)
            parcel_class = np.array([names.index(_class_name(c)) for c in parcel_code])
        else:
            parcel_ids, parcel_class, parcel_code = _voronoi_parcels(
                rng, coarse, max(2, round(parcel_m / (res_m * _PARCEL_PX))), names)
        coarse_tf = Affine(res_m * _PARCEL_PX, 0, x0, 0, -res_m * _PARCEL_PX, y1)
        quad, quarter = quad_name(lon, lat)
        first_classes = parcel_class.copy()
        for k, year in enumerate(years):
            if k > 0:
                candidates = np.flatnonzero(np.isin(parcel_class, convertible))
                if layout:  # real patches range from one cell to the whole county
                    sizes = np.bincount(parcel_ids.ravel(), minlength=len(parcel_class))
                    tile_cells = (224.0 / (res_m * _PARCEL_PX)) ** 2
                    sized = candidates[(sizes[candidates] >= tile_cells)
                                       & (sizes[candidates] <= 12 * tile_cells)]
                    candidates = sized if len(sized) else candidates
                pick = rng.choice(
                    candidates, size=min(changes_per_county, len(candidates)), replace=False
                )
                parcel_class[pick] = developed
                parcel_code[pick] = rng.choice([21, 22, 23, 24], size=len(pick))
                county.changed_parcels += len(pick)
            codes_by_year[year].append((parcel_code[parcel_ids], coarse_tf))
            pixel_parcels = np.repeat(np.repeat(parcel_ids, _PARCEL_PX, 0), _PARCEL_PX, 1)
            year_rng = np.random.default_rng([seed, i, year])
            image = _render(parcel_class[pixel_parcels], pixel_parcels, year_rng, res_m)
            gain = year_rng.uniform(0.94, 1.06)  # acquisitions differ in brightness
            image = np.clip(image * gain, 1, 255).astype(np.uint8)
            url = storage.join(
                out, "naip", f"synthetic_m_{quad}_{quarter}_14_{_res_code(res_m)}_{year}0615.tif"
            )
            _write_geotiff(
                url,
                image,
                UTM,
                tf,
                TIFFTAG_IMAGEDESCRIPTION=_DESCRIPTION,
                SYNTHETIC="yes",
                COUNTY=name,
            )
            county.scenes[year] = url
        if len(years) > 1:
            changed = (first_classes != developed) & (parcel_class == developed)
            truth_url = storage.join(
                out, "truth", f"{name}_newly_developed_{years[0]}_{years[-1]}.tif"
            )
            _write_geotiff(
                truth_url,
                changed[parcel_ids].astype(np.uint8)[None],
                UTM,
                coarse_tf,
                SYNTHETIC="yes",
                MEANING="1 = became Developed",
            )
            county.changed_tiles_truth = truth_url
        made.append(county)
    for year, pieces in codes_by_year.items():
        _write_nlcd(storage.join(out, "nlcd", f"nlcd_{year}_synthetic.tif"), pieces)
    registry = {
        "description": "Synthetic counties made by `landuse synth` (not real places or data)",
        "counties": [
            {
                "name": c.name,
                "state": "nd",
                "bbox": [round(v, 6) for v in c.bbox],
                "naip": "naip",
                "nlcd": "nlcd",
                "truth": "truth",
                "synthetic": True,
            }
            for c in made
        ],
    }
    storage.write_bytes(storage.join(out, "counties.json"), json.dumps(registry, indent=2).encode())
    return made


def _write_nlcd(url: str, pieces: list[tuple[np.ndarray, Affine]]) -> None:
    """Mosaic the counties' code maps into one 30 m Albers raster, as NLCD is distributed."""
    lefts, bottoms, rights, tops = [], [], [], []
    for codes, tf in pieces:
        h, w = codes.shape
        b = transform_bounds(UTM, ALBERS, tf.c, tf.f + tf.e * h, tf.c + tf.a * w, tf.f)
        lefts.append(b[0])
        bottoms.append(b[1])
        rights.append(b[2])
        tops.append(b[3])
    left = math.floor(min(lefts) / 30) * 30 - 300
    top = math.ceil(max(tops) / 30) * 30 + 300
    width = math.ceil((max(rights) + 300 - left) / 30)
    height = math.ceil((top - (min(bottoms) - 300)) / 30)
    dst_tf = Affine(30, 0, left, 0, -30, top)
    mosaic = np.zeros((height, width), dtype=np.uint8)
    for codes, tf in pieces:
        part = np.zeros_like(mosaic)
        reproject(
            codes,
            part,
            src_transform=tf,
            src_crs=UTM,
            dst_transform=dst_tf,
            dst_crs=ALBERS,
            src_nodata=0,
            dst_nodata=0,
            resampling=Resampling.nearest,
        )
        mosaic = np.where(part > 0, part, mosaic)
    _write_geotiff(url, mosaic[None], ALBERS, dst_tf, nodata=0, SYNTHETIC="yes")
