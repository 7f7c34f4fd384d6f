"""Framework inference runners behind one interface: ``predict(tiles) -> probabilities``.

Every runner takes decoded uint8 RGB tiles (N, H, W, 3) and applies the bundle's own
preprocessing (:func:`~landuse.models.preprocessing.to_tensor`), so no caller can feed a
network differently from how it was trained. ONNX Runtime is the default for scoring and
also runs models exported from CNTK or MXNet (old opsets 7-11); Keras and TFLite runners
serve bundles that carry those forms.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np

from landuse.models.bundle import Bundle, BundleError
from landuse.models.preprocessing import to_tensor

# "onnx-int8" is the bundle's int8 form (landuse.models.quantize) through ONNX Runtime.
FRAMEWORKS = ("onnx", "onnx-int8", "keras", "tflite")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


class Runner(Protocol):
    """What scoring operators wrap."""

    bundle: Bundle

    @property
    def model_id(self) -> str:
        """The id this runner's predictions carry."""
        ...

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 RGB tiles (N, H, W, 3)."""
        ...

    def predict_tensor(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for an already preprocessed input tensor."""
        ...


class _Base:
    framework = ""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        return self.predict_tensor(to_tensor(tiles, self.bundle.spec.preprocessing))

    def predict_tensor(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self._run(x), dtype=np.float32).reshape(len(x), -1)
        if out.shape[1] != len(self.bundle.spec.classes):
            raise BundleError(
                f"bundle {self.bundle.path}: field classes: the {self.framework} model returned "
                f"{out.shape[1]} values for {len(self.bundle.spec.classes)} classes"
            )
        return out if self.bundle.spec.outputs_probabilities else softmax(out)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _require_nhwc(self) -> None:
        if self.bundle.spec.preprocessing.layout != "NHWC":
            raise BundleError(
                f"bundle {self.bundle.path}: field preprocessing.layout: the {self.framework} "
                "runner needs NHWC input"
            )


class OnnxRunner(_Base):
    """ONNX Runtime on the CPU (or CUDA when available and asked for)."""

    framework = "onnx"

    def __init__(self, bundle: Bundle, threads: int = 1, providers: list[str] | None = None,
                 int8: bool = False):
        """``int8``: run the bundle's int8 form (:mod:`landuse.models.quantize`); its
        predictions then carry :attr:`model_id` with ``+int8``."""
        import onnxruntime as ort

        super().__init__(bundle)
        self.int8 = int8
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(bundle.file("onnx-int8" if int8 else "onnx")), options,
            providers=providers or ["CPUExecutionProvider"],
        )
        self._input = bundle.spec.onnx_input
        self._output = bundle.spec.onnx_output

    @property
    def model_id(self) -> str:
        return predictions_model_id(self.bundle, "onnx-int8" if self.int8 else "onnx")

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self._output], {self._input: x})[0])


class KerasRunner(_Base):
    """The bundle's trainable Keras model."""

    framework = "keras"

    def __init__(self, bundle: Bundle) -> None:
        import keras

        super().__init__(bundle)
        self._require_nhwc()
        self.model = keras.saving.load_model(str(bundle.file("keras")), compile=False)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(x))  # compiled, unlike model(x)


class TFLiteRunner(_Base):
    """A TFLite model (float or uint8-quantized input) through TensorFlow's interpreter."""

    framework = "tflite"

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        import warnings

        import tensorflow as tf

        super().__init__(bundle)
        self._require_nhwc()
        with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(
                model_path=str(bundle.file("tflite")), num_threads=threads
            )
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._batch = 0

    def _run(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self._batch:
            self.interpreter.resize_tensor_input(self._in["index"], [len(x), *x.shape[1:]])
            self.interpreter.allocate_tensors()
            self._in = self.interpreter.get_input_details()[0]
            self._out = self.interpreter.get_output_details()[0]
            self._batch = len(x)
        self.interpreter.set_tensor(self._in["index"], x.astype(self._in["dtype"], copy=False))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._out["index"])
        scale, zero = self._out.get("quantization", (0.0, 0))
        if scale:
            return (out.astype(np.float32) - zero) * scale
        return out


def predictions_model_id(bundle: Bundle, framework: str) -> str:
    """The model id that predictions of ``bundle`` run in ``framework`` carry: the bundle's,
    marked ``+int8`` for the int8 form, so that change detection never compares int8 calls
    with fp32 ones as if one model made both.

    Raises:
        BundleError: the bundle lacks that model form.
    """
    bundle.file(framework)
    return f"{bundle.model_id}+int8" if framework == "onnx-int8" else bundle.model_id


def open_runner(bundle: Bundle, framework: str = "onnx", **options: Any) -> Runner:
    """A runner for ``bundle`` in the given framework.

    Raises:
        BundleError: unknown framework, or the bundle lacks that model form.
    """
    runners: dict[str, Any] = {"onnx": OnnxRunner, "keras": KerasRunner, "tflite": TFLiteRunner,
                               "onnx-int8": functools.partial(OnnxRunner, int8=True)}
    if framework not in runners:
        raise BundleError(f"unknown framework {framework!r}; use one of {FRAMEWORKS}")
    bundle.file(framework)  # a clear error when the bundle lacks this form
    runner: Runner = runners[framework](bundle, **options)
    return runner
