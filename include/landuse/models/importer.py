"""Import an external ONNX model (e.g. exported from CNTK or MXNet) as a bundle.

The seed's CNTK AlexNet took BGR input, channels first, minus 114: such conventions are
written into the bundle's preprocessing spec, so scoring feeds the model exactly what it
was trained on. The model is run once on a blank tile before the bundle is published.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from landuse.models.bundle import Bundle, BundleError, BundleSpec, write_bundle
from landuse.models.preprocessing import CNTK_ALEXNET, TF_RESNET50, PreprocessSpec
from landuse.models.runners import OnnxRunner

PRESETS: dict[str, PreprocessSpec] = {"cntk-alexnet": CNTK_ALEXNET, "tf-resnet50": TF_RESNET50}


def import_onnx(
    onnx_path: str | Path,
    dest: str | Path,
    *,
    classes: list[str],
    preprocessing: PreprocessSpec,
    name: str,
    backbone: str = "external",
    outputs_probabilities: bool = True,
) -> Bundle:
    """Wrap ``onnx_path`` as a bundle at ``dest``.

    The graph must have one input and one output; a model that outputs logits is marked
    ``outputs_probabilities=False`` and runners apply a softmax.

    Raises:
        BundleError: the model does not fit the classes or the preprocessing spec.
    """
    import onnx

    onnx_path = Path(onnx_path)
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:
        raise BundleError(f"{onnx_path} is not a readable ONNX model ({err})") from err
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise BundleError(f"{onnx_path}: expected one input and one output, got inputs "
                          f"{inputs} and {len(model.graph.output)} output(s)")
    spec = BundleSpec(
        schema_version=1,
        name=name,
        classes=tuple(classes),
        preprocessing=preprocessing,
        backbone=backbone,
        method="imported",
        formats=("onnx",),
        onnx_input=inputs[0],
        onnx_output=model.graph.output[0].name,
        outputs_probabilities=outputs_probabilities,
        params={"source": onnx_path.name,
                "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                             default=0)},
    )

    def write_models(folder: Path) -> None:
        shutil.copyfile(onnx_path, folder / "model.onnx")
        size = preprocessing.input_size
        blank = np.full((1, size, size, 3), 128, dtype=np.uint8)
        try:
            probs = OnnxRunner(Bundle(folder, spec)).predict(blank)
        except BundleError:
            raise
        except Exception as err:  # the runtime's own message says what does not fit
            raise BundleError(f"{onnx_path} does not run with preprocessing "
                              f"{preprocessing.model_dump()}: {err}") from err
        if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
            raise BundleError(f"{onnx_path}: outputs do not sum to 1; pass "
                              "outputs_probabilities=False if the model returns logits")

    return write_bundle(dest, spec, write_models)
