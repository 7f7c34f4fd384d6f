"""Transfer learning as the seed did it: frozen ImageNet base, new head, optional fine-tune.

Head: dense (ReLU) and dropout, then a softmax over the classes training saw. Aerial
augmentation (flips, 90° rotations), class weights, early stopping on validation loss.
On a GPU the run uses mixed precision; on the CPU, float32. The trained network is
exported to ONNX and the two must agree (max abs diff ≤ 1e-4) on validation tiles before
the bundle is written; validation metrics are computed through the ONNX runner, the path
scoring will use.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from landuse.models.backbones import build_backbone
from landuse.models.bundle import Bundle, BundleSpec, Lineage, write_bundle
from landuse.models.data import augment, read_split
from landuse.models.metrics import report
from landuse.models.preprocessing import PreprocessSpec, to_tensor
from landuse.models.runners import OnnxRunner
from landuse.tiles import TileCache

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


class TrainConfig(BaseModel):
    """Options of one transfer-learning candidate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: Literal["squeezenet", "resnet50"] = "squeezenet"
    weights: str = Field("imagenet", description="imagenet, a local weights file, or random")
    epochs: int = Field(5, ge=1, le=500)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    dense_units: int = Field(256, ge=8, le=8192)
    dropout: float = Field(0.5, ge=0, lt=1)
    fine_tune: bool = Field(False, description="then unfreeze the last blocks (GPU advised)")
    fine_tune_layers: int = Field(20, ge=1, description="layers unfrozen when fine-tuning")
    fine_tune_epochs: int = Field(3, ge=1)
    patience: int = Field(3, ge=1, description="early-stopping patience (epochs)")
    seed: int = 0

    @property
    def method(self) -> str:
        """Candidate method name recorded in the bundle."""
        return "fine-tune" if self.fine_tune else "head"


@dataclass(frozen=True)
class TrainResult:
    """A trained candidate."""

    bundle: Bundle
    metrics: dict[str, Any]
    history: dict[str, list[float]]


def _batches(tiles: TileCache, y: np.ndarray, spec: PreprocessSpec, batch_size: int,
             train: bool, seed: int) -> Any:
    import keras

    class TileBatches(keras.utils.PyDataset):
        """Batches from the local tile cache, augmented when training."""

        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(tiles))

        def __len__(self) -> int:
            return math.ceil(len(tiles) / batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            batch = tiles.get(idx)
            if train:
                batch = augment(batch, self.rng)
            return to_tensor(batch, spec), y[idx]

        def on_epoch_end(self) -> None:
            if train:
                self.order = self.rng.permutation(len(tiles))

    return TileBatches()


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def train_keras(
    split_url: str,
    dest: str | Path,
    config: TrainConfig | None = None,
    *,
    name: str | None = None,
    lineage: Lineage | None = None,
) -> TrainResult:
    """Train one candidate on a split and write its bundle to ``dest`` (atomically).

    Raises:
        ValueError: the split is unusable (see :func:`read_split`), a tile is corrupt, or
            the ONNX export disagrees with Keras.
    """
    import keras

    config = config or TrainConfig()
    train, val, classes = read_split(split_url)
    keras.utils.set_random_seed(config.seed)
    gpu = _has_gpu()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "float32")
    try:
        with tempfile.TemporaryDirectory(prefix="landuse-tiles-") as cache:
            return _train(dest, config, name, lineage, train, val, classes, gpu, Path(cache))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(dest: str | Path, config: TrainConfig, name: str | None,
           lineage: Lineage | None, train: Any, val: Any, classes: tuple[str, ...],
           gpu: bool, cache: Path) -> TrainResult:
    import keras

    log.info(
        "training %s on %d tiles (%s), %d classes",
        config.backbone,
        len(train),
        "GPU, mixed precision" if gpu else "CPU",
        len(classes),
    )

    backbone = build_backbone(config.backbone, config.weights)
    spec = backbone.preprocessing
    base = backbone.model
    base.trainable = False
    inputs = keras.Input(spec.input_shape, name="image")
    x = base(inputs, training=False)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        len(classes), activation="softmax", dtype="float32", name="probabilities"
    )(x)
    model = keras.Model(inputs, outputs, name=f"{config.backbone}_landuse")

    index = {c: i for i, c in enumerate(classes)}
    y_train = train["label"].map(index).to_numpy(np.int64)
    y_val = val["label"].map(index).to_numpy(np.int64)
    counts = np.bincount(y_train, minlength=len(classes))
    class_weight = {i: float(len(y_train) / (len(classes) * n)) for i, n in enumerate(counts) if n}
    train_tiles = TileCache(train, spec, cache, "train")
    val_tiles = TileCache(val, spec, cache, "validation")
    for tiles in (train_tiles, val_tiles):
        tiles.all()  # read once, scene by scene; every epoch then reads the local cache
    train_data = _batches(train_tiles, y_train, spec, config.batch_size, True, config.seed)
    val_data = (_batches(val_tiles, y_val, spec, config.batch_size, False, 0)
                if len(val) else None)
    monitor = "val_loss" if val_data is not None else "loss"
    stop = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=config.patience, restore_best_weights=True
    )

    def fit(epochs: int, lr: float) -> dict[str, list[float]]:
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        hist = model.fit(
            train_data,
            validation_data=val_data,
            epochs=epochs,
            class_weight=class_weight,
            callbacks=[stop],
            verbose=2,
        )
        return {k: [float(v) for v in vals] for k, vals in hist.history.items()}

    history = fit(config.epochs, config.learning_rate)
    if config.fine_tune:
        base.trainable = True
        for layer in base.layers[: -config.fine_tune_layers]:
            layer.trainable = False
        for layer in base.layers:  # batch statistics stay ImageNet's
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        tuned = fit(config.fine_tune_epochs, config.learning_rate / 10)
        history = {k: history.get(k, []) + v for k, v in tuned.items()}

    check_from = val_tiles if len(val) else train_tiles
    check_tiles = check_from.get(np.arange(min(32, len(check_from))))

    def write_models(folder: Path) -> None:
        model.save(folder / "model.keras")
        model.export(str(folder / "model.onnx"), format="onnx", verbose=False)

    name = name or f"{config.backbone}-{config.method}"
    bundle_spec = _spec_for(name, classes, spec, config, lineage)
    metrics: dict[str, Any] = {}

    def write_and_check(folder: Path) -> None:
        write_models(folder)
        _set_onnx_names(folder, bundle_spec)
        keras_out = np.asarray(model(to_tensor(check_tiles, spec), training=False))
        runner = OnnxRunner(Bundle(folder, bundle_spec))
        onnx_out = runner.predict(check_tiles)
        diff = float(np.abs(onnx_out - keras_out).max())
        if diff > PARITY_TOLERANCE:
            raise ValueError(f"ONNX export of {name} disagrees with Keras: max abs diff {diff:.2e}")
        metrics["onnx_keras_max_abs_diff"] = diff
        if len(val):
            pixels = val_tiles.all()
            probs = np.concatenate([runner.predict(pixels[i : i + 64])
                                    for i in range(0, len(val), 64)])
            predicted = [classes[i] for i in probs.argmax(axis=1)]
            metrics.update(report(list(val["label"]), predicted, classes))
        bundle_spec.metrics = metrics
        bundle_spec.params = config.model_dump()

    bundle = write_bundle(dest, bundle_spec, write_and_check)
    return TrainResult(bundle, bundle.spec.metrics, history)


def _spec_for(
    name: str,
    classes: tuple[str, ...],
    spec: PreprocessSpec,
    config: TrainConfig,
    lineage: Lineage | None,
) -> BundleSpec:
    return BundleSpec(
        schema_version=1,
        name=name,
        classes=classes,
        preprocessing=spec,
        backbone=config.backbone,
        method=config.method,
        formats=("onnx", "keras"),
        onnx_input="image",
        onnx_output="probabilities",
        lineage=lineage or Lineage(),
    )


def _set_onnx_names(folder: Path, spec: BundleSpec) -> None:
    """Give the exported graph's input and output the names bundle.json promises."""
    import onnx

    path = folder / "model.onnx"
    model = onnx.load(str(path))
    renames = {
        model.graph.input[0].name: spec.onnx_input,
        model.graph.output[0].name: spec.onnx_output,
    }
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    model.graph.input[0].name = spec.onnx_input
    model.graph.output[0].name = spec.onnx_output
    onnx.save(model, str(path))
