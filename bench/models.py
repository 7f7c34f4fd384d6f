"""Model throughput on this machine's CPU: head-only training and inference per framework.

For SqueezeNet (real ImageNet weights, shipped) and ResNet-50 (random weights: ImageNet
weights cannot be downloaded offline; speed does not depend on the weights), with a new
head on a frozen base, measured on real tiles cut from the bundled NAIP scene:
  train      head-only training, images/s (batch 32, after one warm-up batch)
  keras      inference through Keras
  onnx fp32  the same network exported to ONNX, ONNX Runtime
  onnx int8  statically quantized (QDQ, per channel) with onnxruntime's tools, calibrated
             on 32 tiles; top-1 agreement with fp32 on the held-out tiles
Threads: TensorFlow and ONNX Runtime both use the machine's cores.

Run:  .venv/bin/python bench/models.py
Ends with ``ratio=<onnx fp32 / keras>`` (SqueezeNet).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from landuse.counties import County  # noqa: E402
from landuse.models.backbones import build_backbone  # noqa: E402
from landuse.models.data import load_tiles  # noqa: E402
from landuse.models.preprocessing import to_tensor  # noqa: E402
from landuse.tiling import build_county  # noqa: E402

BATCH = 32
THREADS = os.cpu_count() or 2


def real_tiles(n: int) -> np.ndarray:
    """``n`` real 224 px tiles of the bundled Stutsman County scenes (2010 and 2016)."""
    out = Path(tempfile.mkdtemp(prefix="bench-models-"))
    county = County(name="stutsman-nd", state="nd", bbox=(-99.2, 47.0, -99.1, 47.04),
                    naip=str(PROJECT / "sample" / "naip"))
    urls: list[str] = []
    for result in build_county(county, [2010, 2016], str(out)):
        import pandas as pd

        urls += list(pd.read_parquet(result.manifest_url)["image_url"].dropna())
    from landuse.models.preprocessing import CAFFE_BGR

    return load_tiles(urls[:n], CAFFE_BGR)


def timed(fn, batches: list[np.ndarray]) -> float:  # type: ignore[no-untyped-def]
    """Images per second of ``fn`` over ``batches`` after one warm-up call."""
    fn(batches[0])
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def bench(name: str, weights: str, tiles: np.ndarray, work: Path) -> float:
    import keras
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    backbone = build_backbone(name, weights)
    spec = backbone.preprocessing
    base = backbone.model
    base.trainable = False
    inputs = keras.Input(spec.input_shape, name="image")
    x = keras.layers.Dense(256, activation="relu")(base(inputs, training=False))
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(6, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    x_all = to_tensor(tiles, spec)
    y = np.random.default_rng(0).integers(0, 6, BATCH)  # labels do not change the speed
    train_batches = [x_all[i:i + BATCH] for i in range(0, 3 * BATCH, BATCH)]
    train_rate = timed(lambda b: model.train_on_batch(b, y[: len(b)]), train_batches)

    # Score the held-out tiles (not used for calibration).
    held = x_all[BATCH:]
    batches = [held[i:i + BATCH] for i in range(0, len(held), BATCH)]
    keras_rate = timed(lambda b: model(b, training=False), batches)

    fp32 = work / f"{name}.onnx"
    model.export(str(fp32), format="onnx", verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    onnx_rate = timed(lambda b: session.run(None, {input_name: b}), batches)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{input_name: x_all[i:i + 8]} for i in range(0, BATCH, 8)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    int8 = work / f"{name}.int8.onnx"
    quantize_static(str(fp32), str(int8), Calibration(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    q_session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    int8_rate = timed(lambda b: q_session.run(None, {input_name: b}), batches)
    top_fp32 = np.concatenate([session.run(None, {input_name: b})[0] for b in batches]).argmax(1)
    top_int8 = np.concatenate([q_session.run(None, {input_name: b})[0] for b in batches]).argmax(1)
    agreement = float(np.mean(top_fp32 == top_int8))
    print(f"{name:<10} ({weights} weights) train head {train_rate:6.1f} img/s | keras "
          f"{keras_rate:6.1f} | onnx fp32 {onnx_rate:6.1f} | onnx int8 {int8_rate:6.1f} img/s, "
          f"top-1 agreement with fp32 {agreement:.3f} on {len(held)} tiles")
    return onnx_rate / keras_rate


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    tiles = real_tiles(6 * BATCH)
    print(f"{len(tiles)} real NAIP tiles (Stutsman County, ND); batch {BATCH}; {THREADS} CPU "
          "threads")
    with tempfile.TemporaryDirectory() as tmp:
        ratio = bench("squeezenet", "imagenet", tiles, Path(tmp))
        bench("resnet50", "random", tiles, Path(tmp))
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
