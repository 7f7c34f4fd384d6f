"""Model throughput on this machine's CPU: head-only training and inference per framework.

For SqueezeNet (real ImageNet weights, shipped) and ResNet-50 (random weights: ImageNet
weights cannot be downloaded offline; speed does not depend on the weights), with a new
head on a frozen base, on the tiles of a dataset split (``--split``; default the demo's
``output/naip/dataset/split.parquet``, else a synthetic split made in a temp folder):
  train      head-only training, images/s (batch 32, after one warm-up batch); the head is
             then trained for 3 epochs so the comparisons below use a real classifier
  keras      inference through Keras on the validation tiles
  onnx fp32  the same network exported to ONNX, ONNX Runtime
  onnx int8  statically quantized (QDQ, per channel) with onnxruntime's tools, calibrated
             on 32 training tiles; top-1 agreement with fp32 on the validation tiles
  decision   whether training would keep this int8 form (landuse.models.quantize): both
             forms timed as add_int8 times them (model only, 1 thread, best of 3 on up to
             64 validation tiles), int8 kept only at >= MIN_SPEEDUP x fp32 and
             >= MIN_AGREEMENT agreement; printed with the CPU
Threads: TensorFlow and ONNX Runtime both use the machine's cores (except the decision's
1-thread timing).

Run:  .venv/bin/python bench/models.py [--split URL]
Ends with ``ratio=<onnx fp32 / keras>`` (SqueezeNet).
"""

from __future__ import annotations

import argparse
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

from landuse.models.backbones import build_backbone  # noqa: E402
from landuse.models.preprocessing import to_tensor  # noqa: E402
from landuse.tiles import read_tiles  # noqa: E402
from landuse.tiling import build_county  # noqa: E402

BATCH = 32
THREADS = os.cpu_count() or 2


def load_split(split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, str]:
    """Train tiles, train labels, validation tiles, class count, and where they came from."""
    from landuse.models.data import read_split
    from landuse.models.preprocessing import CAFFE_BGR

    demo = PROJECT / "output" / "naip" / "dataset" / "split.parquet"
    if split is None and demo.exists():
        split = str(demo)
    if split is None:
        from landuse import counties, splits
        from landuse.synthetic import make_synthetic

        work = Path(tempfile.mkdtemp(prefix="bench-models-"))
        make_synthetic(str(work / "synthetic"))
        registry = counties.load_registry(str(work / "synthetic" / "counties.json"))
        manifests = [r.manifest_url for c in registry.values()
                     for r in build_county(c, [2010, 2016], str(work / "out"))]
        split = splits.build_dataset(manifests, str(work / "out" / "dataset")).url
    train, val, classes = read_split(split)
    index = {c: i for i, c in enumerate(classes)}
    return (read_tiles(train, CAFFE_BGR),
            train["label"].map(index).to_numpy(), read_tiles(val, CAFFE_BGR),
            len(classes), split)


def timed(fn, batches: list) -> float:  # type: ignore[no-untyped-def]
    """Images per second of ``fn`` over ``batches`` (arrays, or (x, y) pairs) after one
    warm-up call."""
    fn(batches[0])
    start = time.perf_counter()
    for batch in batches:
        fn(batch)
    images = sum(len(b[0]) if isinstance(b, tuple) else len(b) for b in batches)
    return images / (time.perf_counter() - start)


def bench(name: str, weights: str, data: tuple[np.ndarray, np.ndarray, np.ndarray, int],
          work: Path) -> float:
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
    train_tiles, y_train, val_tiles, n_classes = data
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")

    x_train = to_tensor(train_tiles, spec)
    batches_train = [(x_train[i:i + BATCH], y_train[i:i + BATCH])
                     for i in range(0, min(len(x_train), 4 * BATCH), BATCH)]
    train_rate = timed(lambda b: model.train_on_batch(*b), batches_train)
    model.fit(x_train, y_train, epochs=3, batch_size=BATCH, verbose=0)

    held = to_tensor(val_tiles, spec)
    batches = [held[i:i + BATCH] for i in range(0, len(held), BATCH)] * 3
    keras_rate = timed(model.predict_on_batch, batches)  # compiled, as KerasRunner runs it

    fp32 = work / f"{name}.onnx"
    model.export(str(fp32), format="onnx", verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    onnx_rate = timed(lambda b: session.run(None, {input_name: b}), batches)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{input_name: x_train[i:i + 8]} for i in range(0, BATCH, 8)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.items, None)

    int8 = work / f"{name}.int8.onnx"
    quantize_static(str(fp32), str(int8), Calibration(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    q_session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    int8_rate = timed(lambda b: q_session.run(None, {input_name: b}), batches)
    top_fp32 = session.run(None, {input_name: held})[0].argmax(1)
    top_int8 = q_session.run(None, {input_name: held})[0].argmax(1)
    agreement = float(np.mean(top_fp32 == top_int8))
    print(f"{name:<10} ({weights} weights) train head {train_rate:6.1f} img/s | keras "
          f"{keras_rate:6.1f} | onnx fp32 {onnx_rate:6.1f} | onnx int8 {int8_rate:6.1f} img/s, "
          f"top-1 agreement with fp32 {agreement:.3f} on {len(held)} validation tiles")
    print(f"{'':<10} {int8_decision(fp32, int8, held, input_name, agreement)}")
    return onnx_rate / keras_rate


def int8_decision(fp32: Path, int8: Path, held: np.ndarray, input_name: str,
                  agreement: float) -> str:
    """Whether training's int8 step (add_int8) would keep this int8 form on this machine,
    timed the way it times it, and why not."""
    from landuse.models.quantize import (
        INT8,
        MIN_AGREEMENT,
        MIN_SPEEDUP,
        TIMING_TILES,
        cpu_description,
        time_forms,
        why_not_kept,
    )

    timed = held[:TIMING_TILES]
    rates = time_forms({"onnx": fp32, INT8: int8}, timed, input_name)
    check = {"fp32_tiles_per_s": rates["onnx"], "int8_tiles_per_s": rates[INT8],
             "speedup": rates[INT8] / rates["onnx"], "agreement": agreement,
             "tiles": len(held), **cpu_description()}
    reason = why_not_kept(check)
    return (f"int8 decision (1 thread, model only, {len(timed)} tiles): int8 "
            f"{check['int8_tiles_per_s']:.1f} vs fp32 {check['fp32_tiles_per_s']:.1f} img/s = "
            f"{check['speedup']:.2f}x (needs {MIN_SPEEDUP}x), agreement {agreement:.3f} (needs "
            f"{MIN_AGREEMENT}) -> " + ("kept" if reason is None else f"not kept: {reason}"))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default=None, help="split.parquet to take tiles from")
    args = parser.parse_args()
    *data, source = load_split(args.split)
    from landuse.models.quantize import cpu_description

    cpu = cpu_description()
    print(f"{len(data[0])} training / {len(data[2])} validation tiles from {source}; batch "
          f"{BATCH}; {THREADS} CPU threads; CPU {cpu['cpu']}, VNNI: "
          f"{' '.join(cpu['vnni']) or 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        ratio = bench("squeezenet", "imagenet", tuple(data), Path(tmp))  # type: ignore[arg-type]
        bench("resnet50", "random", tuple(data), Path(tmp))  # type: ignore[arg-type]
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
