"""A bundle's fully convolutional model: derived from its ``model.onnx``
(:mod:`landuse.windows.fcn_convert`), checked against the per-window model on random input
before it is used, and kept in the bundle folder (``windows-fcn-{size}-{stride}.onnx``,
tagged with :func:`source_key`) so it is derived again only when the bundle's model or
preprocessing changes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from landuse.models.preprocessing import to_tensor
from landuse.windows.extract import window_view
from landuse.windows.fcn_convert import PIXELS, NotConvertible, convert, take_pixels

if TYPE_CHECKING:
    from landuse.models.bundle import Bundle

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
SOURCE_TAG = "landuse:fcn_source"
# Changed whenever the derived model's form changes, so files of an older form are derived
# again. 2: takes the pixels as read (uint8, band-major), the preprocessing inside.
FCN_FORMAT = 2


def fcn_file_name(size: int, stride: int) -> str:
    """Name of the fully convolutional model for one window layout, inside a bundle."""
    return f"windows-fcn-{size}-{stride}.onnx"


def source_key(bundle: Bundle) -> str:
    """What a fully convolutional model is derived from: the bundle's ``model.onnx``, its
    preprocessing (now inside the model) and the derived form (:data:`FCN_FORMAT`)."""
    import hashlib

    pre = bundle.spec.preprocessing.model_dump_json()
    return hashlib.sha256(f"{FCN_FORMAT}:{bundle.onnx_sha256}:{pre}".encode()).hexdigest()


def cpu_session(model: bytes | str, threads: int) -> Any:
    """An ONNX Runtime session on the CPU for a model (serialised, or a file path) with
    ``threads`` threads within each operator."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def class_probabilities(scores: np.ndarray, as_probabilities: bool) -> np.ndarray:
    """Model outputs as (windows, classes) float32 probabilities: as they are when the
    model outputs probabilities (``as_probabilities``), else softmaxed."""
    from landuse.models.runners import softmax

    flat = np.asarray(scores, dtype=np.float32).reshape(-1, scores.shape[-1])
    return flat if as_probabilities else softmax(flat)


def parity_gap(bundle: Bundle, fcn: bytes, size: int, stride: int, seed: int = 0) -> float:
    """Largest difference between the fully convolutional and the per-window probabilities
    on random pixels covering a 3 × 4 block of windows."""
    spec = bundle.spec.preprocessing
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size + 2 * stride, size + 3 * stride, 3), dtype=np.uint8)
    whole = cpu_session(fcn, 1).run(None, {PIXELS: pixels.transpose(2, 0, 1)[None].copy()})[0]
    windows = window_view(pixels, size, stride).reshape(-1, size, size, 3)
    single = cpu_session(str(bundle.file("onnx")), 1).run(
        [bundle.spec.onnx_output], {bundle.spec.onnx_input: to_tensor(windows, spec)})[0]
    ours = class_probabilities(whole, bundle.spec.outputs_probabilities)
    theirs = class_probabilities(single, bundle.spec.outputs_probabilities)
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
