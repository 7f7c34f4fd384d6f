"""The fully convolutional route of sliding-window scoring: choosing it for a run, and
scoring strips through it.

:func:`choose_route` decides whether a run scores its windows through the bundle's fully
convolutional model (:mod:`landuse.windows.fcn_model`; how a network is made fully
convolutional, and when that is exact: :mod:`landuse.windows.fcn_convert`) or one by one
(:mod:`landuse.windows.extract`), and says why. :class:`FcnScorer` scores strips through
that model in bands of window rows, in process or on a Spark worker
(:func:`worker_scorer`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from landuse.windows.extract import DEFAULT_MIN_VALID, valid_fraction
from landuse.windows.fcn_convert import PIXELS, NotConvertible
from landuse.windows.fcn_model import class_probabilities, cpu_session, fcn_file_name, load_fcn
from landuse.windows.grid import Strip, WindowError, WindowGrid

if TYPE_CHECKING:
    from landuse.models.bundle import Bundle
    from landuse.windows.source import ImageSource

log = logging.getLogger(__name__)

FULLY_CONVOLUTIONAL = "fully-convolutional"
PER_WINDOW = "per-window"
ROUTES = ("auto", FULLY_CONVOLUTIONAL, PER_WINDOW)
# Input pixels per model call (2 Mpx: 27 window rows of a 1 m NAIP scene). Bands of window
# rows bound the trunk's activations (about 130 MB for the bench's small CNN; a whole
# 16,384-window strip at once would double that), the rows recomputed where bands meet
# (window - stride px per band) stay under 4 %; on the bench's CPU, bands of 0.5, 1 and
# 2 Mpx ran within its noise of each other (46,000-50,000 windows per CPU second).
MAX_FCN_PIXELS = 1 << 21


@dataclass(frozen=True)
class Route:
    """How a run scores its windows: ``fully-convolutional`` or ``per-window``, and why."""

    name: str
    reason: str
    size: int
    stride: int

    @property
    def fully_convolutional(self) -> bool:
        """Whether strips go through the fully convolutional model."""
        return self.name == FULLY_CONVOLUTIONAL


def choose_route(bundle: Bundle, size: int, stride: int, *, framework: str = "onnx",
                 requested: str = "auto") -> Route:
    """Decide the route for a run, deriving and storing the fully convolutional model when
    it is possible and wanted.

    Args:
        bundle: the loaded bundle.
        size, stride: the window layout.
        framework: the runner asked for; the fully convolutional model runs on ONNX Runtime.
        requested: ``auto`` (fully convolutional when possible), ``fully-convolutional``
            (required) or ``per-window``.

    Raises:
        WindowError: an unknown route, or ``fully-convolutional`` asked for a network that
            cannot take it (the message says why).
    """
    if requested not in ROUTES:
        raise WindowError(f"route must be one of {ROUTES}, got {requested!r}")
    if requested == PER_WINDOW:
        return Route(PER_WINDOW, "asked for", size, stride)
    try:
        if framework != "onnx":
            raise NotConvertible(f"framework {framework}: the fully convolutional model runs "
                                 "on ONNX Runtime")
        load_fcn(bundle, size, stride)
    except NotConvertible as err:
        if requested == FULLY_CONVOLUTIONAL:
            raise WindowError(f"bundle {bundle.path} cannot score {size} px windows every "
                              f"{stride} px fully convolutionally: {err}") from err
        log.info("per-window scoring: %s", err)
        return Route(PER_WINDOW, str(err), size, stride)
    return Route(FULLY_CONVOLUTIONAL, f"{fcn_file_name(size, stride)} in the bundle", size,
                 stride)


class FcnScorer:
    """Scores strips through a bundle's fully convolutional model, one call per band of
    window rows (at most ``max_pixels`` input pixels)."""

    def __init__(self, bundle: Bundle, size: int, stride: int, *, threads: int = 1,
                 max_pixels: int = MAX_FCN_PIXELS) -> None:
        self.bundle = bundle
        self.size, self.stride, self.max_pixels = size, stride, max_pixels
        self.session = cpu_session(load_fcn(bundle, size, stride), threads)

    def band_rows(self, width: int) -> int:
        """Window rows per model call for an image ``width`` px wide."""
        rows = (self.max_pixels // width - (self.size - self.stride)) // self.stride
        return max(1, rows)

    def score_pixels(self, pixels: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """Class probabilities (rows * cols, classes) of the windows of (1, 3, H, W) uint8
        RGB pixels (as GDAL reads them) whose first ``rows`` × ``cols`` windows are
        wanted."""
        spec = self.bundle.spec
        out = self.session.run([spec.onnx_output], {PIXELS: pixels})[0]
        if out.shape[1] < rows or out.shape[2] < cols:
            raise RuntimeError(f"the fully convolutional model gave a {out.shape[1]} × "
                               f"{out.shape[2]} grid for {rows} × {cols} windows")
        return class_probabilities(out[0, :rows, :cols], spec.outputs_probabilities)

    def score_strip(self, source: ImageSource, grid: WindowGrid, strip: Strip, *,
                    min_valid: float = DEFAULT_MIN_VALID) -> np.ndarray:
        """Class probabilities (strip.windows, classes) float32 of every window of
        ``strip``, NaN where a window has less than ``min_valid`` valid pixels (as
        :func:`~landuse.windows.extract.score_strip`, which scores each window alone).

        The strip's window rows are scored whole (a strip may start and end inside a row)
        in bands of :meth:`band_rows`; bands overlap by window - stride pixel rows, so each
        window sees exactly its own pixels.
        """
        if (grid.size, grid.stride) != (self.size, self.stride):
            raise WindowError(f"this model scores {self.size} px windows every {self.stride}"
                              f" px, not {grid.size} / {grid.stride}")
        bands, valid = source.read_bands(strip.pixel_row0, strip.pixel_row1)
        width = grid.covered[1]
        window_rows = strip.last_row - strip.first_row + 1
        band = self.band_rows(width)
        parts = []
        for r0 in range(0, window_rows, band):
            r1 = min(window_rows, r0 + band)
            rows = slice(r0 * grid.stride, (r1 - 1) * grid.stride + grid.size)
            part = np.ascontiguousarray(bands[None, :, rows, :width])
            parts.append(self.score_pixels(part, r1 - r0, grid.cols))
        probs = np.concatenate(parts)
        first = strip.start - strip.first_row * grid.cols
        out = np.ascontiguousarray(probs[first:first + strip.windows], dtype=np.float32)
        if valid is not None:
            rows_i, cols_i = np.divmod(np.arange(strip.start, strip.stop), grid.cols)
            share = valid_fraction(valid, grid.size, grid.stride, rows_i - strip.first_row,
                                   cols_i)
            out[share < min_valid] = np.nan
        return out


_WORKER_SCORERS: dict[tuple[str, int, int, int], FcnScorer] = {}


def worker_scorer(bundle_dir: str, size: int, stride: int, threads: int) -> FcnScorer:
    """This Spark worker's scorer (loaded once per Python worker, like its runners): the
    shipped bundle's stored model when it came along, else derived here."""
    from landuse.models.bundle import load_bundle

    key = (bundle_dir, size, stride, threads)
    if key not in _WORKER_SCORERS:
        _WORKER_SCORERS[key] = FcnScorer(load_bundle(bundle_dir), size, stride,
                                         threads=threads)
    return _WORKER_SCORERS[key]
