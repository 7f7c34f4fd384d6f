"""Vectorised window extraction and scoring of one strip through any model bundle.

A strip's pixel rows are read once; every window is then a view into them
(:func:`numpy.lib.stride_tricks.sliding_window_view`), and a batch of windows is gathered
from a tensor of the strip preprocessed once (the bundle's own ``to_tensor``) with one
fancy-indexing copy, resized to the bundle's input size when it differs (separable
bilinear, the whole batch at once) and scored with one model call. There is no Python loop
per window.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from landuse.models.preprocessing import to_tensor
from landuse.windows.grid import Strip, WindowGrid

if TYPE_CHECKING:
    from landuse.models.runners import Runner
    from landuse.windows.source import ImageSource

DEFAULT_BATCH = 64
DEFAULT_MIN_VALID = 0.5
# A batch holds at most this many input pixels (64 windows of 64 px; 5 of 224 px): large
# inputs in big batches only cost memory, and on a CPU core a network like SqueezeNet runs
# no faster per image at batch 64 than at batch 1 (its activations leave the caches).
MAX_BATCH_PIXELS = 64 * 64 * 64


def window_view(pixels: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Every window of an (H, W, C) array as a (rows, cols, size, size, C) view (no copy)."""
    view = sliding_window_view(pixels, (size, size), axis=(0, 1))[::stride, ::stride]
    return view.transpose(0, 1, 3, 4, 2)


def valid_fraction(
    valid: np.ndarray, size: int, stride: int, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Share of valid pixels in the windows at grid (``rows``, ``cols``) of a validity mask
    (``rows`` counted from the mask's first row): one running sum down the columns gives
    each window row's band, a running sum along each band gives the windows."""
    down = np.zeros((valid.shape[0] + 1, valid.shape[1]), dtype=np.int32)
    np.cumsum(valid, axis=0, dtype=np.int32, out=down[1:])
    band_rows, which = np.unique(rows, return_inverse=True)
    bands = down[band_rows * stride + size] - down[band_rows * stride]  # (bands, width)
    across = np.zeros((len(band_rows), valid.shape[1] + 1), dtype=np.int64)
    np.cumsum(bands, axis=1, out=across[:, 1:])
    c0 = cols * stride
    inside = across[which, c0 + size] - across[which, c0]
    return np.asarray(inside / float(size * size))


@lru_cache(maxsize=16)
def _resize_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, (n_out, taps) each, of a bilinear (triangle) resampling
    with Pillow's conventions: pixel centres at +0.5, the filter widened by the scale when
    shrinking (antialiasing), weights cut at the edges and renormalised."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    x = np.arange(n_in) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs((x[None, :] - centres[:, None]) / support))
    weights /= weights.sum(axis=1, keepdims=True)
    taps = int((weights > 0).sum(axis=1).max())
    order = np.argsort(weights <= 0, axis=1, kind="stable")[:, :taps]  # nonzero first
    return order, np.take_along_axis(weights, order, axis=1).astype(np.float32)


def _resample(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Resample float ``x`` along ``axis`` to ``n_out``: a weighted sum of a few gathered
    slices (two for enlarging), not a dense matrix product."""
    index, weight = _resize_taps(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = np.take(x, index[:, 0], axis=axis)
    out *= weight[:, 0].reshape(shape)
    for k in range(1, index.shape[1]):
        part = np.take(x, index[:, k], axis=axis)
        part *= weight[:, k].reshape(shape)
        out += part
    return out


def resize_tensor(batch: np.ndarray, out: int) -> np.ndarray:
    """Resize a float (N, h, w, C) batch to (N, out, out, C), bilinear, separably for the
    whole batch at once (Pillow's ``BILINEAR`` weights; see :func:`resize_windows`)."""
    return _resample(_resample(batch, 2, out), 1, out)


def resize_windows(windows: np.ndarray, out: int) -> np.ndarray:
    """Resize (N, h, w, C) uint8 windows to (N, out, out, C) uint8, bilinear (agrees with
    Pillow's ``BILINEAR`` to within one level)."""
    _, h, w, _ = windows.shape
    if h == out and w == out:
        return windows
    resized = resize_tensor(windows.astype(np.float32), out)
    resized += 0.5  # convex weights keep values in [0, 255]: rounding is all that is left
    return resized.astype(np.uint8)


def gather(view: np.ndarray, grid: WindowGrid, first_row: int, indices: np.ndarray) -> np.ndarray:
    """Windows ``indices`` (row-major grid indices) from a strip's window view, as one
    contiguous (N, size, size, C) batch; the view starts at window row ``first_row``."""
    rows, cols = np.divmod(indices, grid.cols)
    return np.ascontiguousarray(view[rows - first_row, cols])


def score_strip(
    source: ImageSource,
    grid: WindowGrid,
    strip: Strip,
    runner: Runner,
    *,
    batch_size: int = DEFAULT_BATCH,
    min_valid: float = DEFAULT_MIN_VALID,
) -> np.ndarray:
    """Class probabilities of every window of ``strip``.

    Args:
        source: the open image.
        grid: the window grid over it.
        strip: which windows, and which pixel rows to read for them.
        runner: any bundle's runner; windows are resized to its input size when they differ.
        batch_size: windows per model call, at most ``MAX_BATCH_PIXELS`` input pixels.
        min_valid: windows with a smaller share of valid (not nodata, not masked) pixels are
            not scored.

    Returns:
        (strip.windows, classes) float32; rows of windows not scored are NaN.
    """
    pixels, valid = source.read_rows(strip.pixel_row0, strip.pixel_row1)
    indices = np.arange(strip.start, strip.stop, dtype=np.int64)
    todo = indices
    if valid is not None:
        rows, cols = np.divmod(indices, grid.cols)
        share = valid_fraction(valid, grid.size, grid.stride, rows - strip.first_row, cols)
        todo = indices[share >= min_valid]
    out = np.full((len(indices), len(runner.bundle.spec.classes)), np.nan, dtype=np.float32)
    spec = runner.bundle.spec.preprocessing
    # Preprocess the strip once with the bundle's own to_tensor, then gather the windows
    # from the tensor: with the seed's layout every pixel lies in four windows, so this is a
    # quarter of the work of preprocessing each window, and (being elementwise) gives each
    # window exactly the tensor it would get on its own. Windows of another size than the
    # model's input are resized as tensors: bilinear weights sum to one, so resizing after
    # the per-channel scale and shift equals resizing first (the uint8 rounding of a
    # resized tile aside: at most half a level).
    tensor = to_tensor(pixels[None], spec.model_copy(update={"layout": "NHWC"}))[0]
    view = window_view(tensor, grid.size, grid.stride)
    batch_size = max(1, min(batch_size, MAX_BATCH_PIXELS // spec.input_size**2))
    for begin in range(0, len(todo), batch_size):
        chosen = todo[begin:begin + batch_size]
        batch = gather(view, grid, strip.first_row, chosen)
        if spec.input_size != grid.size:
            resized = resize_tensor(batch.astype(np.float32, copy=False), spec.input_size)
            if spec.dtype == "uint8":
                resized += 0.5
            batch = resized.astype(batch.dtype, copy=False)
        if spec.layout == "NCHW":
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        out[chosen - strip.start] = runner.predict_tensor(batch)
    return out
