"""An int8 form of a bundle's ONNX model, made and checked at training time.

Static quantization (QDQ, int8 weights per channel from opset 13 on, uint8 activations)
with ONNX Runtime's own tools, calibrated on training tiles through the bundle's
preprocessing. The int8 model
is then checked where the candidates are judged, on the validation tiles: its top-1
agreement with the fp32 model and its accuracy go into ``bundle.json`` (``metrics.int8``).
Scoring uses it only when asked (``int8=True``), and predictions then carry a model id of
their own, so a change run never compares int8 with fp32 calls as if one model made both.

Whether int8 is faster depends on the CPU: with VNNI (AVX-512 or AVX-VNNI) ONNX Runtime's
int8 kernels run about 2-3x faster; with AVX2 alone they were no faster than fp32 here
(``bench/models.py`` prints both on the machine it runs on).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from landuse.models.bundle import MODEL_FILES, Bundle, BundleSpec, write_bundle
from landuse.models.preprocessing import to_tensor

log = logging.getLogger(__name__)
INT8 = "onnx-int8"
CALIBRATION_BATCH = 8


def add_int8(bundle: Bundle, calibration: np.ndarray, tiles: np.ndarray,
             truth: list[str]) -> Bundle:
    """Rewrite ``bundle`` (a local folder) with ``model.int8.onnx`` and its check.

    Args:
        bundle: a freshly trained bundle.
        calibration: uint8 RGB training tiles (N, H, W, 3) for the activation ranges.
        tiles: uint8 RGB validation tiles to check the int8 model on.
        truth: their labels.

    Returns:
        The rewritten bundle (same model id: ``model.onnx`` is unchanged). A model ONNX
        Runtime cannot quantize keeps its fp32 form only; ``metrics.int8.error`` says why.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    spec = bundle.spec
    name = spec.onnx_input

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            x = to_tensor(calibration, spec.preprocessing)
            self.items = iter([{name: x[i:i + CALIBRATION_BATCH]}
                               for i in range(0, len(x), CALIBRATION_BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="landuse-int8-") as work:
        int8 = Path(work) / MODEL_FILES[INT8]
        try:
            quantize_static(str(bundle.file("onnx")), str(int8), Calibration(),
                            quant_format=QuantFormat.QDQ, per_channel=_opset(bundle) >= 13,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            check = _check(ort, bundle, int8, tiles, truth)
        except Exception as err:  # int8 is optional: record why, keep the fp32 form
            log.warning("bundle %s: no int8 form: %s", bundle.path, err)
            return _rewrite(bundle, {**spec.metrics, "int8": {"error": str(err)[:500]}}, None)
        log.info("bundle %s int8: top-1 agreement with fp32 %.4f on %d validation tiles",
                 bundle.path, check["agreement"], check["tiles"])
        return _rewrite(bundle, {**spec.metrics, "int8": check}, int8)


def _opset(bundle: Bundle) -> int:
    """The model's ai.onnx opset: per-channel scales need 13 (older CNTK/MXNet-era models
    are quantized per tensor)."""
    import onnx

    model = onnx.load(str(bundle.file("onnx")), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
               default=0)


def _check(ort: Any, bundle: Bundle, int8: Path, tiles: np.ndarray,
           truth: list[str]) -> dict[str, Any]:
    spec = bundle.spec
    x = to_tensor(tiles, spec.preprocessing)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    calls = []
    for path in (bundle.file("onnx"), int8):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        calls.append(np.concatenate([
            np.asarray(session.run([spec.onnx_output], {spec.onnx_input: x[i:i + 64]})[0])
            .reshape(len(x[i:i + 64]), -1).argmax(axis=1) for i in range(0, len(x), 64)]))
    fp32, q = calls
    predicted = [spec.classes[j] for j in q]
    return {"agreement": round(float(np.mean(fp32 == q)), 4),
            "accuracy": round(float(np.mean([p == t for p, t in zip(predicted, truth,
                                                                    strict=True)])), 4),
            "tiles": len(x), "method": "static QDQ, int8 weights, uint8 activations"}


def _rewrite(bundle: Bundle, metrics: dict[str, Any], int8: Path | None) -> Bundle:
    formats = tuple(f for f in bundle.spec.formats if f != INT8) + ((INT8,) if int8 else ())
    spec = BundleSpec.model_validate({**bundle.spec.model_dump(), "metrics": metrics,
                                      "formats": formats})

    def copy_models(folder: Path) -> None:
        for path in bundle.path.iterdir():  # model files and whatever else training wrote
            if path.is_file() and path.name not in ("bundle.json", MODEL_FILES[INT8]):
                (folder / path.name).write_bytes(path.read_bytes())
        if int8 is not None:
            (folder / MODEL_FILES[INT8]).write_bytes(int8.read_bytes())

    return write_bundle(bundle.path, spec, copy_models)
