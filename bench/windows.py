"""Sliding-window throughput: vectorised against a naive per-window loop, and 1 vs 2 Spark workers.

Image: the bundled real NAIP scene (Stutsman County, ND, 2016; 5 m) resampled (bilinear) to
NAIP's own 1 m pixel (``--pixel-m``): 4670 × 3615 px, 64,960 windows of 32 px every 16 px
(the seed's window and stride), written as a tiled GeoTIFF.

Models, each an ONNX bundle:
  linear      the window's mean colour -> linear -> softmax: next to no compute, so its row
              measures getting windows to a model (read, extract, preprocess, call);
  small CNN   a CIFAR-style network on 32 × 32 input (three 3×3 convolutions of 16/32/64
              channels with ReLU, two 2×2 max-pools, global average pool, dense, softmax;
              random He weights: speed does not depend on them); the seed scored its 32 px
              windows with a CIFAR ResNet, a network of this kind;
  SqueezeNet  (``--squeezenet``) the shipped SqueezeNet v1.1 with a fresh six-class head,
              224 px input, so every 32 px window is resized; on the scene as shipped (5 m,
              2508 windows) to keep the run short.

Measured in one run, one ONNX Runtime thread, best of ``--repeats`` (alternating), as
windows per second of wall-clock time and per second of this process's CPU time (steadier
on a shared machine):
  vectorised  :func:`landuse.windows.job.score_in_process`: strips read from the GeoTIFF,
              preprocessed once, every window a view (``sliding_window_view``), gathered and
              scored in batches of ``--batch-size`` (at most 5 windows of 224 px: see
              ``landuse.windows.extract.MAX_BATCH_PIXELS``);
  naive       a Python loop per window over the same image held in memory (read once,
              untimed): slice the window (resize it with Pillow when the model wants another
              size) and call the runner on it alone, as the seed did (one window per model
              call); timed on the first ``--naive-windows`` windows;
  spark       :func:`landuse.windows.spark.score_strips_on_spark` with the small CNN on
              ``local[1]`` and ``local[2]`` (one inference thread per worker), timed after a
              warm-up job on the 5 m scene that starts the Python workers and loads the model;
              parallel efficiency = rate(2) / (2 × rate(1)). The slowest strip's time over
              the mean strip time says whether the strips were equal work.

Run:  .venv/bin/python bench/windows.py [--pixel-m 1] [--squeezenet] [--no-spark]
Ends with ``ratio=<vectorised/naive>`` for the small CNN.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from landuse.labels import CLASSES  # noqa: E402
from landuse.models.bundle import Bundle, BundleSpec, write_bundle  # noqa: E402
from landuse.models.preprocessing import PreprocessSpec  # noqa: E402

SCENE = PROJECT / "sample" / "naip" / "m_4709963_se_14_1_20160816.tif"
SIZE, STRIDE = 32, 16
SEED_MINUTES = (69.1, 6.9)  # the seed: one node, twelve nodes


def make_image(dest: Path, pixel_m: float) -> Path:
    """The real scene resampled (bilinear) to ``pixel_m`` metres, RGB, tiled GeoTIFF."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import Affine

    with rasterio.open(SCENE) as src:
        factor = src.res[0] / pixel_m
        height, width = round(src.height * factor), round(src.width * factor)
        data = src.read([1, 2, 3], out_shape=(3, height, width), resampling=Resampling.bilinear)
        transform = src.transform * Affine.scale(src.width / width, src.height / height)
        profile = {"driver": "GTiff", "width": width, "height": height, "count": 3,
                   "dtype": "uint8", "crs": src.crs, "transform": transform,
                   "nodata": src.nodata, "tiled": True, "blockxsize": 512, "blockysize": 512,
                   "compress": "deflate"}
    with rasterio.open(dest, "w", **profile) as dst:
        dst.write(data)
    return dest


def small_cnn_bundle(dest: Path) -> Bundle:
    """A CIFAR-sized CNN (NHWC float input, pixels / 255) as an ONNX bundle."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def conv(name: str, cin: int, cout: int) -> list:
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        return [numpy_helper.from_array(w, f"{name}_w"),
                numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")]

    inits = conv("c1", 3, 16) + conv("c2", 16, 32) + conv("c3", 32, 64)
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, (64, len(CLASSES))).astype(np.float32),
                                      "fc_w"),
              numpy_helper.from_array(np.zeros(len(CLASSES), np.float32), "fc_b")]
    nodes = [helper.make_node("Transpose", ["image"], ["x0"], perm=[0, 3, 1, 2])]
    x = "x0"
    for i, name in enumerate(("c1", "c2", "c3")):
        nodes += [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [f"{name}_y"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"{name}_y"], [f"{name}_r"])]
        x = f"{name}_r"
        if i < 2:
            nodes.append(helper.make_node("MaxPool", [x], [f"{name}_p"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"{name}_p"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["n", len(CLASSES)])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    spec = BundleSpec(schema_version=1, name="bench-small-cnn", classes=CLASSES,
                      preprocessing=PreprocessSpec(input_size=SIZE, scale=1 / 255),
                      backbone="small-cnn", method="imported", formats=("onnx",),
                      onnx_input="image", onnx_output="probabilities")
    return write_bundle(dest, spec, lambda f: (f / "model.onnx").write_bytes(
        model.SerializeToString()))


def linear_bundle(dest: Path) -> Bundle:
    """A linear classifier on the window's mean colour (no network): what is left is the
    cost of getting windows to a model, so this row measures the extraction itself."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)],
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                       ["n", len(CLASSES)])],
        initializer=[numpy_helper.from_array(
            rng.normal(0, 1, (3, len(CLASSES))).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    spec = BundleSpec(schema_version=1, name="bench-linear", classes=CLASSES,
                      preprocessing=PreprocessSpec(input_size=SIZE, scale=1 / 255),
                      backbone="none", method="imported", formats=("onnx",),
                      onnx_input="image", onnx_output="probabilities")
    return write_bundle(dest, spec, lambda f: (f / "model.onnx").write_bytes(
        model.SerializeToString()))


def squeezenet_bundle(dest: Path) -> Bundle:
    """Shipped SqueezeNet v1.1 (ImageNet) with a fresh six-class head, 224 px input."""
    sys.path.insert(0, str(PROJECT / "bench"))
    from scoring import build_bundle  # bench/scoring.py

    return build_bundle("squeezenet", "imagenet", dest)


def vectorised(image: str, bundle: Bundle, batch_size: int) -> tuple[float, float, int]:
    """Windows per second and per CPU second of score_in_process (one thread), and the
    window count."""
    from landuse.windows.job import image_grid, score_in_process

    grid, _, _ = image_grid(image, SIZE, STRIDE)
    wall, cpu = time.perf_counter(), time.process_time()
    score_in_process(image, bundle, grid, batch_size=batch_size, threads=1)
    return (grid.count / (time.perf_counter() - wall),
            grid.count / (time.process_time() - cpu), grid.count)


def naive(image: str, bundle: Bundle, limit: int) -> tuple[float, float]:
    """Windows per second and per CPU second of a per-window loop: slice, resize if
    needed, one model call each."""
    from PIL import Image

    from landuse.models.runners import open_runner
    from landuse.windows.grid import WindowGrid
    from landuse.windows.source import open_image

    runner = open_runner(bundle, "onnx", threads=1)
    size = bundle.spec.preprocessing.input_size
    with open_image(image) as source:
        pixels, _ = source.read_rows(0, source.height)
        grid = WindowGrid(source.height, source.width, SIZE, STRIDE)
    count = min(limit, grid.count)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        r, c = divmod(i, grid.cols)
        window = pixels[r * STRIDE:r * STRIDE + SIZE, c * STRIDE:c * STRIDE + SIZE]
        if size != SIZE:
            window = np.asarray(Image.fromarray(window).resize((size, size),
                                                               Image.Resampling.BILINEAR))
        runner.predict(window[None])
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def spark_rate(image: str, bundle: Bundle, workers: int, batch_size: int,
               repeats: int) -> tuple[float, float, float]:
    """Windows/s on local[workers] (best of ``repeats`` after a warm-up job on the scene as
    shipped), the slowest strip over the mean strip time of the best run, and the warm-up
    job's seconds."""
    from landuse.spark import local_spark
    from landuse.windows.job import image_grid
    from landuse.windows.spark import score_strips_on_spark

    spark = local_spark(f"bench-windows-{workers}", master=f"local[{workers}]")
    grid, _, _ = image_grid(image, SIZE, STRIDE)
    small, _, _ = image_grid(str(SCENE), SIZE, STRIDE)
    try:
        started = time.perf_counter()  # starts the Python workers, loads the model in each
        score_strips_on_spark(spark, str(SCENE), bundle, small, batch_size=batch_size)
        warm = time.perf_counter() - started
        best, spread = 0.0, 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            _, seconds, _ = score_strips_on_spark(spark, image, bundle, grid,
                                                  batch_size=batch_size)
            rate = grid.count / (time.perf_counter() - started)
            if rate > best:
                best, spread = rate, max(seconds) / (sum(seconds) / len(seconds))
    finally:
        spark.stop()
    return best, spread, warm


def compare(name: str, image: str, bundle: Bundle, args: argparse.Namespace,
            naive_windows: int) -> tuple[float, float]:
    """Vectorised and naive windows/s of one bundle on one image (best of the repeats,
    alternated so a busy spell cannot favour one side); prints wall-clock and CPU rates."""
    vec = slow = vec_cpu = slow_cpu = 0.0
    count = 0
    for _ in range(args.repeats):
        rate, cpu, count = vectorised(image, bundle, args.batch_size)
        vec, vec_cpu = max(vec, rate), max(vec_cpu, cpu)
        rate, cpu = naive(image, bundle, naive_windows)
        slow, slow_cpu = max(slow, rate), max(slow_cpu, cpu)
    print(f"{name:<21} {vec:10.1f} {slow:10.1f} {vec / slow:6.2f}   {vec_cpu:10.1f} "
          f"{slow_cpu:10.1f} {vec_cpu / slow_cpu:6.2f}   "
          f"({bundle.spec.preprocessing.input_size} px input; naive on "
          f"{min(naive_windows, count)} of {count} windows)")
    return vec, slow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pixel-m", type=float, default=1.0,
                        help="resample the scene to this pixel size (m)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--naive-windows", type=int, default=4000,
                        help="windows timed in the naive loop (its rate is steady)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--squeezenet", action="store_true",
                        help="add SqueezeNet (224 px; on the scene as shipped, 5 m)")
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="landuse-bench-windows-"))
    try:
        import rasterio

        image = str(make_image(work / "scene.tif", args.pixel_m))
        with rasterio.open(image) as src:
            shape = (src.width, src.height)
        cnn = small_cnn_bundle(work / "small-cnn")
        print(f"image: real NAIP scene (2016) resampled to {args.pixel_m:g} m, "
              f"{shape[0]} × {shape[1]} px; windows of {SIZE} px every {STRIDE} px; "
              f"batch {args.batch_size}; 1 ONNX Runtime thread")
        print(f"{'':<21} {'windows/s':>28}   {'windows per CPU second':>29}")
        print(f"{'model':<21} {'vectorised':>10} {'naive':>10} {'ratio':>6}   "
              f"{'vectorised':>10} {'naive':>10} {'ratio':>6}")
        compare("linear (mean colour)", image, linear_bundle(work / "linear"), args,
                args.naive_windows * 5)
        vec, slow = compare("small CNN", image, cnn, args, args.naive_windows)
        if args.squeezenet:
            compare("SqueezeNet v1.1", str(SCENE), squeezenet_bundle(work / "squeezenet"),
                    args, 300)
        if not args.no_spark:
            one, spread1, warm1 = spark_rate(image, cnn, 1, args.batch_size, args.repeats)
            two, spread2, warm2 = spark_rate(image, cnn, 2, args.batch_size, args.repeats)
            print(f"spark local[1], small CNN  {one:9.1f} windows/s  (strips slowest/mean "
                  f"{spread1:.2f}; warm-up job {warm1:.1f} s)")
            print(f"spark local[2], small CNN  {two:9.1f} windows/s  (strips slowest/mean "
                  f"{spread2:.2f}; warm-up job {warm2:.1f} s)")
            print(f"speed-up 1 -> 2 workers    {two / one:9.2f}x   parallel efficiency "
                  f"{two / (2 * one):.2f}  (the seed: {SEED_MINUTES[0] / SEED_MINUTES[1]:.1f}x "
                  f"on 12 nodes, efficiency {SEED_MINUTES[0] / SEED_MINUTES[1] / 12:.2f})")
        print(f"ratio={vec / slow:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
