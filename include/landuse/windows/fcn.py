"""Fully convolutional sliding windows: the work overlapping windows share is done once.

The bundle's network is made fully convolutional (:mod:`landuse.windows.fcn_convert`, which
also says when that is exact). :func:`derive_fcn` builds that model from a bundle's
``model.onnx`` and checks it against the per-window model on random input before it is
used. :func:`choose_route` keeps it in the bundle folder
(``windows-fcn-{size}-{stride}.onnx``, tagged with :func:`source_key`) or says why the
per-window path must be used instead; :class:`FcnScorer` scores strips through it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from landuse.models.preprocessing import to_tensor
from landuse.windows.extract import DEFAULT_MIN_VALID, valid_fraction, window_view
from landuse.windows.fcn_convert import PIXELS, NotConvertible, convert, take_pixels
from landuse.windows.grid import Strip, WindowError, WindowGrid

if TYPE_CHECKING:
    from landuse.models.bundle import Bundle
    from landuse.windows.source import ImageSource

log = logging.getLogger(__name__)

FULLY_CONVOLUTIONAL = "fully-convolutional"
PER_WINDOW = "per-window"
ROUTES = ("auto", FULLY_CONVOLUTIONAL, PER_WINDOW)
PARITY_TOLERANCE = 1e-4
SOURCE_TAG = "landuse:fcn_source"
# Changed whenever the derived model's form changes, so files of an older form are derived
# again. 2: takes the pixels as read (uint8, band-major), the preprocessing inside.
FCN_FORMAT = 2
# Input pixels per model call (2 Mpx: 27 window rows of a 1 m NAIP scene). Bands of window
# rows bound the trunk's activations (about 130 MB for the bench's small CNN; a whole
# 16,384-window strip at once would double that), the rows recomputed where bands meet
# (window - stride px per band) stay under 4 %; on the bench's CPU, bands of 0.5, 1 and
# 2 Mpx ran within its noise of each other (46,000-50,000 windows per CPU second).
MAX_FCN_PIXELS = 1 << 21

def fcn_file_name(size: int, stride: int) -> str:
    """Name of the fully convolutional model for one window layout, inside a bundle."""
    return f"windows-fcn-{size}-{stride}.onnx"


def source_key(bundle: Bundle) -> str:
    """What a fully convolutional model is derived from: the bundle's ``model.onnx``, its
    preprocessing (now inside the model) and the derived form (:data:`FCN_FORMAT`)."""
    import hashlib

    pre = bundle.spec.preprocessing.model_dump_json()
    return hashlib.sha256(f"{FCN_FORMAT}:{bundle.onnx_sha256}:{pre}".encode()).hexdigest()


def _session(model: bytes | str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _probabilities(scores: np.ndarray, as_probabilities: bool) -> np.ndarray:
    from landuse.models.runners import softmax

    flat = np.asarray(scores, dtype=np.float32).reshape(-1, scores.shape[-1])
    return flat if as_probabilities else softmax(flat)


def parity_gap(bundle: Bundle, fcn: bytes, size: int, stride: int, seed: int = 0) -> float:
    """Largest difference between the fully convolutional and the per-window probabilities
    on random pixels covering a 3 × 4 block of windows."""
    spec = bundle.spec.preprocessing
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size + 2 * stride, size + 3 * stride, 3), dtype=np.uint8)
    whole = _session(fcn, 1).run(None, {PIXELS: pixels.transpose(2, 0, 1)[None].copy()})[0]
    windows = window_view(pixels, size, stride).reshape(-1, size, size, 3)
    single = _session(str(bundle.file("onnx")), 1).run(
        [bundle.spec.onnx_output], {bundle.spec.onnx_input: to_tensor(windows, spec)})[0]
    ours = _probabilities(whole, bundle.spec.outputs_probabilities)
    theirs = _probabilities(single, bundle.spec.outputs_probabilities)
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.abs(ours - theirs).max())


def derive_fcn(bundle: Bundle, size: int, stride: int) -> bytes:
    """The bundle's network made fully convolutional for ``size`` / ``stride`` windows,
    serialised, after checking it against the per-window network on random input.

    Raises:
        NotConvertible: the network cannot be converted exactly, or the check fails.
    """
    import onnx
    from onnx import helper

    spec = bundle.spec
    if spec.preprocessing.input_size != size:
        raise NotConvertible(f"the model takes {spec.preprocessing.input_size} px input, so "
                             f"every {size} px window is resized")
    model = onnx.load(str(bundle.file("onnx")))
    fcn = convert(model, input_name=spec.onnx_input, output_name=spec.onnx_output,
                  layout=spec.preprocessing.layout, size=size, stride=stride)
    fcn = take_pixels(fcn, spec.preprocessing, spec.onnx_input)
    helper.set_model_props(fcn, {**{p.key: p.value for p in fcn.metadata_props},
                                 SOURCE_TAG: source_key(bundle)})
    data: bytes = fcn.SerializeToString()
    gap = parity_gap(bundle, data, size, stride)
    if not gap <= PARITY_TOLERANCE:
        raise NotConvertible(f"the converted model differs from the per-window one by {gap:.2e}"
                             f" (tolerance {PARITY_TOLERANCE:g})")
    return data


def _stored(path: Path, key: str) -> bytes | None:
    """The fully convolutional model at ``path`` if it was derived from ``key``
    (:func:`source_key`)."""
    import onnx

    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    except Exception:  # a truncated or foreign file: derive again
        return None
    return data if props.get(SOURCE_TAG) == key else None


def load_fcn(bundle: Bundle, size: int, stride: int, *, store: bool = True) -> bytes:
    """The bundle's fully convolutional model for this layout: the one kept in the bundle
    folder when it was derived from this ``model.onnx`` and preprocessing, else derived now
    and (``store``) written there atomically; a read-only bundle folder only skips the
    write.

    Raises:
        NotConvertible: see :func:`derive_fcn`.
    """
    path = bundle.path / fcn_file_name(size, stride)
    data = _stored(path, source_key(bundle))
    if data is not None:
        return data
    data = derive_fcn(bundle, size, stride)
    if store:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as err:
            log.info("bundle %s is read-only (%s): fully convolutional model kept in memory",
                     bundle.path, err)
    return data


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
        self.session = _session(load_fcn(bundle, size, stride), threads)

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
        return _probabilities(out[0, :rows, :cols], spec.outputs_probabilities)

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
