"""ImageNet backbones, with real pretrained weights that work offline.

* ``squeezenet``: SqueezeNet v1.1 defined here in Keras 3; the ImageNet weights shipped in
  ``weights/squeezenet_v1.1_notop.h5`` (MIT) are copied in layer by layer with h5py (the
  file is an old Keras HDF5 whose layer names Keras 3 rejects). 512-d pooled features.
* ``resnet50``: Keras applications ResNet-50, the seed's TensorFlow model. ImageNet weights
  download on first use where a machine is online, or come from a local ``.h5`` path;
  random weights only when asked for explicitly (``weights="random"``). 2048-d features.
* ``mobilenet_v1``: the uint8-quantized MobileNet v1 embedding extractor shipped in
  ``weights/`` (TFLite, Apache-2.0): 1024-d features, for the featurize-and-classify route.

Both Keras backbones were trained on Caffe-style input (BGR, ImageNet mean subtracted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landuse.models.preprocessing import CAFFE_BGR, PreprocessSpec

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SQUEEZENET_WEIGHTS = WEIGHTS_DIR / "squeezenet_v1.1_notop.h5"
MOBILENET_V1_TFLITE = WEIGHTS_DIR / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
MOBILENET_V1_SPEC = PreprocessSpec(dtype="uint8")

# SqueezeNet v1.1 fire modules: (id, squeeze, expand); max-pool after fire 3 and 5.
_FIRES = (
    (2, 16, 64),
    (3, 16, 64),
    (4, 32, 128),
    (5, 32, 128),
    (6, 48, 192),
    (7, 48, 192),
    (8, 64, 256),
    (9, 64, 256),
)


@dataclass(frozen=True)
class Backbone:
    """A feature extractor: Keras model (input tiles, output pooled features) and its input."""

    name: str
    model: Any  # keras.Model
    preprocessing: PreprocessSpec
    features: int


def _squeezenet_layers(size: int) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(64, 3, strides=2, padding="valid", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for fire, squeeze, expand in _FIRES:
        s = layers.Conv2D(squeeze, 1, activation="relu", name=f"fire{fire}_squeeze1x1")(x)
        left = layers.Conv2D(expand, 1, activation="relu", name=f"fire{fire}_expand1x1")(s)
        right = layers.Conv2D(
            expand, 3, padding="same", activation="relu", name=f"fire{fire}_expand3x3"
        )(s)
        x = layers.Concatenate(name=f"fire{fire}_concat")([left, right])
        if fire in (3, 5):
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{fire}")(x)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, x, name="squeezenet_v1_1")


def load_squeezenet_weights(model: Any, path: Path = SQUEEZENET_WEIGHTS) -> None:
    """Copy the old-layout HDF5 kernels and biases into the Keras 3 SqueezeNet.

    Raises:
        ValueError: the file is missing or not HDF5, lacks a layer, or a shape differs.
    """
    import h5py

    try:
        weights_file = h5py.File(path, "r")
    except OSError as err:  # missing, unreadable, or not an HDF5 file
        raise ValueError(f"{path}: not a readable HDF5 weights file ({err})") from err
    with weights_file as f:
        for layer in model.layers:
            if not layer.name.startswith(("conv1", "fire")) or not layer.weights:
                continue
            group_path = layer.name.replace("_", "/", 1)  # fire2_squeeze1x1 -> fire2/squeeze1x1
            if group_path not in f:
                raise ValueError(f"{path}: no weights for layer {layer.name} ({group_path})")
            group = f[group_path]
            arrays: dict[int, Any] = {}
            for key in _datasets(group):
                data = group[key][()]
                arrays[data.ndim] = data
            kernel, bias = arrays.get(4), arrays.get(1)
            if kernel is None or bias is None or kernel.shape != tuple(layer.kernel.shape):
                raise ValueError(f"{path}: weights of {layer.name} do not fit the layer")
            layer.set_weights([kernel, bias])


def _datasets(group: Any) -> list[str]:
    import h5py

    names: list[str] = []
    group.visit(lambda n: names.append(n) if isinstance(group[n], h5py.Dataset) else None)
    return names


def build_backbone(name: str, weights: str | None = "imagenet", input_size: int = 224) -> Backbone:
    """A pooled-feature backbone by name.

    Args:
        name: ``squeezenet`` or ``resnet50``.
        weights: ``imagenet`` (shipped for SqueezeNet; downloaded or cached for ResNet-50),
            a local weights file, or ``random`` (explicitly untrained, for tests).
        input_size: square input side.

    Raises:
        ValueError: unknown backbone or weights.
    """
    spec = CAFFE_BGR.model_copy(update={"input_size": input_size})
    if name == "squeezenet":
        model = _squeezenet_layers(input_size)
        if weights not in ("random", None):
            path = SQUEEZENET_WEIGHTS if weights == "imagenet" else Path(weights)
            load_squeezenet_weights(model, path)
        return Backbone(name, model, spec, 512)
    if name == "resnet50":
        import keras

        if weights in ("random", None):
            keras_weights = None
        elif weights == "imagenet" or Path(weights).is_file():
            keras_weights = weights
        else:
            raise ValueError(f"ResNet-50 weights {weights!r}: use imagenet, a file, or random")
        try:
            model = keras.applications.ResNet50(
                include_top=False,
                weights=keras_weights,
                input_shape=(input_size, input_size, 3),
                pooling="avg",
            )
        except Exception as err:  # an offline machine cannot fetch the ImageNet weights
            raise ValueError(
                f"cannot load ResNet-50 weights {weights!r} ({err}); offline, pass a local "
                "resnet50 'notop' .h5 file"
            ) from err
        return Backbone(name, model, spec, 2048)
    raise ValueError(f"unknown backbone {name!r}; use squeezenet or resnet50")
