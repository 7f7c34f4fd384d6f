"""Vectorised extraction: the same windows as a naive loop, across strip seams; resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from landuse.models.bundle import load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.models.runners import open_runner
from landuse.raster import RasterError
from landuse.windows.extract import (
    gather,
    resize_windows,
    score_strip,
    valid_fraction,
    window_view,
)
from landuse.windows.grid import WindowGrid, plan_strips
from landuse.windows.source import open_image


def _naive(pixels: np.ndarray, grid: WindowGrid) -> np.ndarray:
    return np.stack([pixels[r0:r1, c0:c1] for r0, c0, r1, c1 in grid.boxes()])


@pytest.mark.parametrize(("size", "stride"), [(32, 16), (32, 32), (7, 3), (16, 5)])
def test_window_view_matches_a_naive_loop(collage, size, stride):
    grid = WindowGrid(*collage.pixels.shape[:2], size, stride)
    view = window_view(collage.pixels, size, stride)
    assert view.shape == (grid.rows, grid.cols, size, size, 3)
    assert np.shares_memory(view, collage.pixels)  # a view, no copy
    np.testing.assert_array_equal(view.reshape(-1, size, size, 3), _naive(collage.pixels, grid))


@pytest.mark.parametrize(("slots", "max_windows"), [(1, 10_000), (2, 10_000), (3, 37), (5, 11)])
def test_windows_read_strip_by_strip_are_the_whole_images_windows(collage, slots, max_windows):
    """Read from the GeoTIFF in strips, gathered in batches: no window lost or doubled at a
    seam, and each equal to the window cut from the whole image."""
    grid = WindowGrid(*collage.pixels.shape[:2], 32, 16)
    expected = _naive(collage.pixels, grid)
    got = np.zeros_like(expected)
    seen = np.zeros(grid.count, dtype=int)
    with open_image(str(collage.tif)) as source:
        for s in plan_strips(grid, slots, max_windows=max_windows):
            pixels, valid = source.read_rows(s.pixel_row0, s.pixel_row1)
            assert valid is None  # no nodata, no mask
            view = window_view(pixels, grid.size, grid.stride)
            indices = np.arange(s.start, s.stop)
            for begin in range(0, len(indices), 13):  # batches that do not align with rows
                chosen = indices[begin:begin + 13]
                got[chosen] = gather(view, grid, s.first_row, chosen)
                seen[chosen] += 1
    assert (seen == 1).all()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("size", "out"), [(32, 64), (32, 224), (45, 32), (16, 16)])
def test_resize_agrees_with_pillow_bilinear(collage, size, out):
    windows = window_view(collage.pixels, size, size).reshape(-1, size, size, 3)[:6]
    resized = resize_windows(windows, out)
    assert resized.shape == (6, out, out, 3) and resized.dtype == np.uint8
    reference = np.stack([np.asarray(Image.fromarray(w).resize((out, out),
                                                              Image.Resampling.BILINEAR))
                          for w in windows])
    assert np.abs(resized.astype(int) - reference.astype(int)).max() <= 1


def test_valid_fraction_matches_window_means():
    rng = np.random.default_rng(1)
    valid = rng.random((70, 90)) > 0.3
    grid = WindowGrid(70, 90, 20, 7)
    rows, cols = np.divmod(np.arange(grid.count), grid.cols)
    share = valid_fraction(valid, 20, 7, rows, cols)
    expected = [valid[r0:r1, c0:c1].mean() for r0, c0, r1, c1 in grid.boxes()]
    np.testing.assert_allclose(share, expected)


def test_strip_scores_match_the_model_in_numpy(collage, colour_bundle, colour_reference):
    grid = WindowGrid(*collage.pixels.shape[:2], 32, 16)
    runner = open_runner(load_bundle(colour_bundle))
    with open_image(str(collage.tif)) as source:
        s = plan_strips(grid, 3)[1]
        probs = score_strip(source, grid, s, runner, batch_size=10)
    windows = _naive(collage.pixels, grid)[s.start:s.stop]
    np.testing.assert_allclose(probs, colour_reference(windows), atol=1e-5)


def test_nodata_windows_are_not_scored(tmp_path: Path, collage, colour_bundle):
    """A NAIP-like nodata corner (0 in every band): windows mostly inside it stay NaN."""
    pixels = collage.pixels.copy()
    pixels[:100, :150] = 0
    path = tmp_path / "nodata.tif"
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0],
                       count=3, dtype="uint8", nodata=0, crs="EPSG:26914",
                       transform=from_origin(1000, 2000, 1, 1)) as dst:
        dst.write(pixels.transpose(2, 0, 1))
    grid = WindowGrid(*pixels.shape[:2], 32, 16)
    runner = open_runner(load_bundle(colour_bundle))
    with open_image(str(path)) as source:
        probs = score_strip(source, grid, plan_strips(grid)[0], runner, min_valid=0.5)
    boxes = grid.boxes()
    inside = np.clip(np.minimum(boxes[:, 2], 100) - boxes[:, 0], 0, None) * np.clip(
        np.minimum(boxes[:, 3], 150) - boxes[:, 1], 0, None) / 32**2
    np.testing.assert_array_equal(np.isnan(probs[:, 0]), inside > 0.5)
    assert np.isnan(probs).any() and not np.isnan(probs).all()


def test_image_without_rgb_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "gray.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs="EPSG:26914", transform=from_origin(1000, 2000, 1, 1)) as dst:
        dst.write(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(RasterError, match=r"gray\.tif has 1 uint8 band.*red, green and blue"):
        open_image(str(path)).__enter__()
    with pytest.raises(RasterError, match=r"cannot open image .*missing\.tif"):
        open_image(str(tmp_path / "missing.tif")).__enter__()


def test_naip_nir_band_is_not_taken_for_alpha_but_a_png_alpha_is(tmp_path: Path, collage):
    """GDAL tags a 4-band 8-bit GeoTIFF's 4th band as alpha; in NAIP it is near-infrared,
    and a dark pond there must not hide the pixels. A PNG's alpha is a real mask."""
    height, width = collage.pixels.shape[:2]
    fourth = np.full((height, width), 200, dtype=np.uint8)
    fourth[:64, :64] = 0
    path = tmp_path / "rgbn.tif"
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4,
                       dtype="uint8", crs="EPSG:26914",
                       transform=from_origin(1000, 2000, 1, 1)) as dst:
        dst.write(np.concatenate([collage.pixels.transpose(2, 0, 1), fourth[None]]))
    Image.fromarray(np.dstack([collage.pixels, fourth])).save(tmp_path / "rgba.png")
    with rasterio.open(path) as src:
        assert src.colorinterp[3].name == "alpha"  # what GDAL made of it
    with open_image(str(path)) as source:
        assert source.read_rows(0, 64)[1] is None
    with open_image(str(tmp_path / "rgba.png")) as source:
        _, valid = source.read_rows(0, 64)
        assert not source.georeferenced
    assert valid is not None and not valid[:, :64].any() and valid[:, 64:].all()


@pytest.mark.parametrize(
    "spec",
    [PreprocessSpec(input_size=32, scale=1 / 255),
     PreprocessSpec(input_size=32, layout="NCHW", channel_order="BGR",
                    mean=(104.0, 117.0, 124.0), std=(58.0, 57.0, 57.5)),
     PreprocessSpec(input_size=32, dtype="uint8"),
     PreprocessSpec(input_size=48, layout="NCHW", mean=(120.0, 120.0, 120.0))],
    ids=["nhwc", "nchw-bgr-mean-std", "uint8", "resized-nchw"],
)
def test_strip_scores_equal_the_runner_on_each_window(collage, onnx_kit, tmp_path, spec):
    """Preprocessing the strip once gives each window exactly the tensor it would get on
    its own through the bundle's runner (and resized windows the resized tile's)."""
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", spec, ("a", "b", "c"),
                                         style="conv"))
    runner = open_runner(bundle)
    grid = WindowGrid(*collage.pixels.shape[:2], 32, 16)
    with open_image(str(collage.tif)) as source:
        s = plan_strips(grid, 4)[2]
        probs = score_strip(source, grid, s, runner, batch_size=50)
    windows = _naive(collage.pixels, grid)[s.start:s.stop]
    expected = runner.predict(resize_windows(windows, spec.input_size))
    # Exact when windows go in as they are; resized tensors skip the tile's uint8 rounding.
    tolerance = 1e-6 if spec.input_size == 32 else 1e-3
    np.testing.assert_allclose(probs, expected, rtol=0, atol=tolerance)
