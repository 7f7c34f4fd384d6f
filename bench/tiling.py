"""Tiling throughput: a real NAIP GeoTIFF to labelled PNG tiles plus manifest.

Measures, in one run and on the same tiles:
  pipeline  landuse.tiling.build_county: catalogue, NLCD reprojection and purity, windowed
            read, PNG encode, atomic writes, Parquet manifest;
  ceiling   the raw work alone: the same windowed rasterio reads plus PNG encodes.
Two workloads: the bundled real scene as shipped (5 m GSD, so a 224 m tile is a 45 px
window upsampled to 224 px) and the same scene resampled to 1 m, NAIP's native scale
(each tile a 224 × 224 px window). There is no real NLCD offline: the labels come from a
synthetic 30 m Albers NLCD-coded raster over the scene (said so in the output).

Run:  .venv/bin/python bench/tiling.py [--repeats 3]
Ends with ``ratio=<pipeline/ceiling>`` (the worse of the two workloads).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))

from landuse.counties import County  # noqa: E402
from landuse.tiling import TileGrid, TilingConfig, build_county, encode_png  # noqa: E402

SCENE = PROJECT / "sample" / "naip" / "m_4709963_se_14_1_20160816.tif"


def make_nlcd(scene: Path, out: Path) -> None:
    """A 30 m EPSG:5070 raster of real NLCD codes in 600 m blocks over the scene."""
    with rasterio.open(scene) as src:
        left, bottom, right, top = transform_bounds(src.crs, "EPSG:5070", *src.bounds)
    left, top = left - 300, top + 300
    w, h = int((right - left) / 30) + 20, int((top - bottom) / 30) + 20
    rng = np.random.default_rng(0)
    codes = np.array([21, 31, 41, 52, 71, 82, 11], dtype=np.uint8)
    blocks = rng.choice(codes, size=(h // 20 + 1, w // 20 + 1))
    data = np.kron(blocks, np.ones((20, 20), dtype=np.uint8))[:h, :w]
    with rasterio.open(out, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       crs="EPSG:5070", transform=Affine(30, 0, left, 0, -30, top),
                       nodata=0) as dst:
        dst.write(data, 1)


def resample_scene(scene: Path, out: Path, gsd: float) -> None:
    """The real scene resampled to ``gsd`` metres (bilinear), same CRS and extent."""
    with rasterio.open(scene) as src:
        scale = src.res[0] / gsd
        h, w = int(src.height * scale), int(src.width * scale)
        data = src.read(out_shape=(src.count, h, w), resampling=Resampling.bilinear)
        profile = src.profile | dict(width=w, height=h, transform=src.transform * Affine.scale(
            1 / scale), tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)


def ceiling(scene: Path, config: TilingConfig) -> int:
    """Windowed read + PNG encode of every tile: the raw work, nothing else."""
    n = 0
    with rasterio.open(scene) as src:
        grid = TileGrid.inside(tuple(src.bounds), config.tile_size_m)
        for _, _, bounds in grid.tiles():
            window = from_bounds(*bounds, transform=src.transform)
            pixels = src.read([1, 2, 3], window=window, boundless=True, fill_value=0,
                              out_shape=(3, config.tile_px, config.tile_px),
                              resampling=Resampling.bilinear)
            encode_png(pixels)
            n += 1
    return n


def measure(label: str, scene_dir: Path, nlcd: Path, repeats: int) -> float:
    config = TilingConfig(chips="all")  # every tile written as a PNG, as the seed did
    with rasterio.open(next(scene_dir.glob("*.tif"))) as src:
        bbox = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    county = County(name="bench", state="nd", bbox=bbox, naip=str(scene_dir), nlcd=str(nlcd))
    scene = next(scene_dir.glob("*.tif"))
    best_pipe = best_ceil = float("inf")
    tiles = 0
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="bench-tiling-"))
        t0 = time.perf_counter()
        [result] = build_county(county, [2016], str(out), config)
        best_pipe = min(best_pipe, time.perf_counter() - t0)
        shutil.rmtree(out)
        t0 = time.perf_counter()
        tiles = ceiling(scene, config)
        best_ceil = min(best_ceil, time.perf_counter() - t0)
        assert tiles == result.tiles, (tiles, result.tiles)
    pipe_rate, ceil_rate = tiles / best_pipe, tiles / best_ceil
    print(f"{label}: {tiles} tiles, {result.trainable} trainable | pipeline {pipe_rate:7.1f} "
          f"tiles/s | ceiling (read + PNG encode) {ceil_rate:7.1f} tiles/s | "
          f"ratio {pipe_rate / ceil_rate:.3f}")
    return pipe_rate / ceil_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-tiling-data-"))
    try:
        nlcd = work / "nlcd_2016_synthetic.tif"
        make_nlcd(SCENE, nlcd)
        native = work / "native"
        native.mkdir()
        shutil.copy(SCENE, native / SCENE.name)
        one_m = work / "1m"
        one_m.mkdir()
        resample_scene(SCENE, one_m / SCENE.name, 1.0)
        print(f"scene: {SCENE.name} (real NAIP, Stutsman County ND); labels: synthetic "
              "NLCD-coded 30 m Albers raster (no real NLCD offline); best of "
              f"{args.repeats}; 224 m tiles at 224 px, RGB")
        ratios = [
            measure("5 m as shipped", native, nlcd, args.repeats),
            measure("1 m (resampled)", one_m, nlcd, args.repeats),
        ]
        print(f"ratio={min(ratios):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
