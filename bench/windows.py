"""Sliding-window throughput: fully convolutional, per window (vectorised, naive); Spark 1 vs 2.

Image: the bundled real NAIP scene (Stutsman County, ND, 2016; 5 m) resampled (bilinear) to
NAIP's own 1 m pixel (``--pixel-m``): 4670 × 3615 px, 64,960 windows of 32 px every 16 px
(the seed's window and stride), written as a tiled GeoTIFF.

Models, each an ONNX bundle:
  linear      the window's mean colour -> linear -> softmax: next to no compute, so its row
              measures getting windows to a model (read, extract, preprocess, call);
  small CNN   a CIFAR-style network on 32 × 32 input (three unpadded 3×3 convolutions of
              16/32/64 channels with ReLU, two 2×2 max-pools, global average pool, dense,
              softmax; random He weights: speed does not depend on them); the seed scored
              its 32 px windows with a CIFAR ResNet, a network of this kind. Unpadded, so
              that it can be made fully convolutional exactly; the same network with padded
              convolutions is refused (a window's zero border is its own), and the run
              prints why;
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
  fully convolutional  the same with ``route=fully-convolutional``
              (:mod:`landuse.windows.fcn`): each band of window rows through the network made
              fully convolutional, in one call (the model derived before timing);
  naive       a Python loop per window over the same image held in memory (read once,
              untimed): slice the window (resize it with Pillow when the model wants another
              size) and call the runner on it alone, as the seed did (one window per model
              call); timed on the first ``--naive-windows`` windows;
  spark       :func:`landuse.windows.spark.score_strips_on_spark`, fully convolutional,
              with the small CNN on
              ``local[1]`` and ``local[2]`` (one inference thread per worker), timed after a
              warm-up job on the 5 m scene that starts the Python workers and loads the model;
              parallel efficiency = rate(2) / (2 × rate(1)). The slowest strip's time over
              the mean strip time says whether the strips were equal work.

Also printed: the CPU (``lscpu`` model name and AVX / FMA flags); the FLOPs per window of
each route (2 per multiply-add of Conv, MatMul and Gemm, plus one per element summed by an
average pooling, from ONNX shape inference; the fully convolutional count includes the rows
recomputed where bands meet), and for each convolution its FLOPs per window on both routes
(how much neighbouring windows share it) and the FLOP ratio, the bound on exact sharing;
the machine's matrix-multiply rate (float32 1024³ on one thread, ONNX Runtime and numpy,
best of 5, per wall-clock and per CPU second), and how close each route comes to it (FLOPs
per window × windows/s ÷ the ONNX Runtime matmul rate, on both clocks).

Run:  .venv/bin/python bench/windows.py [--pixel-m 1] [--squeezenet] [--no-spark]
Ends with ``ratio=<fully convolutional/naive>`` for the small CNN.
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
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's matmul on one thread, like ORT

from landuse.labels import CLASSES  # noqa: E402
from landuse.models.bundle import Bundle, BundleSpec, write_bundle  # noqa: E402
from landuse.models.preprocessing import PreprocessSpec  # noqa: E402
from machine import cpu_info  # noqa: E402

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


def small_cnn_bundle(dest: Path, pad: int = 0) -> Bundle:
    """A CIFAR-sized CNN (NHWC float input, pixels / 255) as an ONNX bundle; unpadded
    convolutions unless ``pad``."""
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
                                   kernel_shape=[3, 3], pads=[pad] * 4),
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


def vectorised(image: str, bundle: Bundle, batch_size: int,
               route: str = "per-window") -> tuple[float, float, int]:
    """Windows per second and per CPU second of score_in_process (one thread) by ``route``,
    and the window count."""
    from landuse.windows.fcn import choose_route
    from landuse.windows.job import image_grid, score_in_process

    grid, _, _ = image_grid(image, SIZE, STRIDE)
    plan = choose_route(bundle, SIZE, STRIDE, requested=route)  # derived before timing
    wall, cpu = time.perf_counter(), time.process_time()
    score_in_process(image, bundle, grid, batch_size=batch_size, threads=1, route=plan)
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
    from landuse.windows.fcn import choose_route
    from landuse.windows.job import image_grid
    from landuse.windows.spark import score_strips_on_spark

    spark = local_spark(f"bench-windows-{workers}", master=f"local[{workers}]")
    grid, _, _ = image_grid(image, SIZE, STRIDE)
    small, _, _ = image_grid(str(SCENE), SIZE, STRIDE)
    route = choose_route(bundle, SIZE, STRIDE, requested="fully-convolutional")
    try:
        started = time.perf_counter()  # starts the Python workers, loads the model in each
        score_strips_on_spark(spark, str(SCENE), bundle, small, batch_size=batch_size,
                              route=route)
        warm = time.perf_counter() - started
        best, spread = 0.0, 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            _, seconds, _ = score_strips_on_spark(spark, image, bundle, grid,
                                                  batch_size=batch_size, route=route)
            rate = grid.count / (time.perf_counter() - started)
            if rate > best:
                best, spread = rate, max(seconds) / (sum(seconds) / len(seconds))
    finally:
        spark.stop()
    return best, spread, warm


def matmul_rates(n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a float32 n × n × n matrix product on one thread, ONNX Runtime and numpy,
    per second of wall-clock time and per second of this process's CPU time (best of
    ``repeats``): keys ``ort``, ``ort_cpu``, ``numpy``, ``numpy_cpu``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    rates = {}
    for name, call in (("ort", lambda: session.run(None, {"a": a, "b": b})),
                       ("numpy", lambda: a @ b)):
        call()
        wall, cpu = [], []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            call()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        rates[name] = 2 * n**3 / min(wall) / 1e9
        rates[f"{name}_cpu"] = 2 * n**3 / max(min(cpu), 1e-9) / 1e9
    return rates


def model_flops(model, shape: list[int]) -> float:
    """FLOPs of one call of an ONNX model on an input of ``shape`` (see node_flops)."""
    return sum(node_flops(model, shape).values())


def node_flops(model, shape: list[int]) -> dict[str, float]:
    """FLOPs of each node (keyed "op first-output") of one call of an ONNX model on an
    input of ``shape``: 2 per multiply-add of Conv, MatMul and Gemm, 1 per element an
    average pooling sums (shape inference); other nodes count 0."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = value
    del model.graph.value_info[:]
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.input, *inferred.graph.value_info,
                        *inferred.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    flops: dict[str, float] = {}
    for node in inferred.graph.node:
        out = shapes.get(node.output[0], [])
        total = 0.0
        if node.op_type == "Conv":
            w = shapes[node.input[1]]
            total += 2 * np.prod(out, dtype=float) * np.prod(w[1:], dtype=float)
        elif node.op_type in ("MatMul", "Gemm"):
            a, b = shapes[node.input[0]], consts.get(node.input[1])
            inner = a[-1] if b is None else b.shape[0 if node.op_type == "MatMul" else 1]
            if node.op_type == "Gemm" and b is not None:
                attrs = {x.name: x.i for x in node.attribute}
                inner = b.shape[1 if attrs.get("transB", 0) else 0]
            total += 2 * np.prod(out, dtype=float) * inner
        elif node.op_type == "AveragePool":
            kernel = next(list(x.ints) for x in node.attribute if x.name == "kernel_shape")
            total += np.prod(out, dtype=float) * np.prod(kernel, dtype=float)
        elif node.op_type in ("GlobalAveragePool", "ReduceMean"):
            total += np.prod(shapes[node.input[0]], dtype=float)
        flops[f"{node.op_type} {node.output[0]}"] = total
    return flops


def route_flops(bundle: Bundle, image_width: int
                ) -> tuple[dict[str, float], dict[str, float] | None]:
    """FLOPs per window of each node: per window (one window per call), and fully
    convolutional (one band of window rows across the image, recomputed seam rows
    included); None when the network cannot be converted."""
    import onnx

    from landuse.windows.fcn import FcnScorer
    from landuse.windows.fcn_convert import NotConvertible
    from landuse.windows.fcn_model import load_fcn

    side = bundle.spec.preprocessing.input_size  # the windows are resized to it
    per_window = node_flops(onnx.load(str(bundle.file("onnx"))), [1, side, side, 3])
    try:
        fcn = onnx.load_from_string(load_fcn(bundle, SIZE, STRIDE))
    except NotConvertible:
        return per_window, None
    scorer = FcnScorer(bundle, SIZE, STRIDE)
    cols = (image_width - SIZE) // STRIDE + 1
    width = (cols - 1) * STRIDE + SIZE
    rows = scorer.band_rows(width)
    height = (rows - 1) * STRIDE + SIZE
    whole = node_flops(fcn, [1, 3, height, width])
    return per_window, {k: v / (rows * cols) for k, v in whole.items()}


def compare(name: str, image: str, bundle: Bundle, args: argparse.Namespace,
            naive_windows: int, width: int, matmul: dict[str, float]
            ) -> tuple[float, float, float]:
    """Fully convolutional, vectorised and naive windows/s of one bundle on one image (best
    of the repeats, alternated so a busy spell cannot favour one route); prints wall-clock
    and CPU rates, FLOPs per window and the share of the matmul rate. Returns the three
    wall-clock rates (fully convolutional 0 when the network cannot be converted)."""
    from landuse.windows.fcn import choose_route

    convertible = choose_route(bundle, SIZE, STRIDE).fully_convolutional
    wall = {"fcn": 0.0, "vec": 0.0, "naive": 0.0}
    cpu = dict(wall)
    count = 0
    for _ in range(args.repeats):
        if convertible:
            rate, per_cpu, count = vectorised(image, bundle, args.batch_size,
                                              "fully-convolutional")
            wall["fcn"], cpu["fcn"] = max(wall["fcn"], rate), max(cpu["fcn"], per_cpu)
        rate, per_cpu, count = vectorised(image, bundle, args.batch_size)
        wall["vec"], cpu["vec"] = max(wall["vec"], rate), max(cpu["vec"], per_cpu)
        rate, per_cpu = naive(image, bundle, naive_windows)
        wall["naive"], cpu["naive"] = max(wall["naive"], rate), max(cpu["naive"], per_cpu)
    by_node, by_node_fcn = route_flops(bundle, width)
    flops_window = sum(by_node.values())
    flops_fcn = None if by_node_fcn is None else sum(by_node_fcn.values())
    size = bundle.spec.preprocessing.input_size
    print(f"{name}  ({size} px input; naive on {min(naive_windows, count)} of {count} "
          "windows)")
    for key, label, flops in (("fcn", "fully convolutional", flops_fcn),
                              ("vec", "vectorised per window", flops_window),
                              ("naive", "naive per window", flops_window)):
        if flops is None:
            print(f"  {label:<22} {'not convertible':>10}")
            continue
        print(f"  {label:<22} {wall[key]:10.1f} {cpu[key]:10.1f} {flops / 1e6:10.3f} "
              f"{flops * wall[key] / 1e9:9.2f} {flops * wall[key] / 1e9 / matmul['ort']:9.1%} "
              f"{flops * cpu[key] / 1e9:9.2f} {flops * cpu[key] / 1e9 / matmul['ort_cpu']:9.1%}")
    if by_node_fcn is not None and flops_fcn:
        # Sharing per convolution: the deeper a layer, the less neighbouring windows share.
        convs = [(k, v) for k, v in by_node.items()
                 if k.startswith("Conv ") and by_node_fcn.get(k)]
        if convs:
            print("  shared work: " + ", ".join(
                f"{k} {v / 1e6:.2f} -> {by_node_fcn[k] / 1e6:.2f} MFLOP "
                f"({v / by_node_fcn[k]:.2f}x)" for k, v in convs))
        print(f"  FLOP ratio (the bound on exact sharing) {flops_window / flops_fcn:.2f}x")
    if convertible:
        print(f"  fully convolutional / vectorised {wall['fcn'] / wall['vec']:.2f}x wall, "
              f"{cpu['fcn'] / cpu['vec']:.2f}x CPU; / naive {wall['fcn'] / wall['naive']:.2f}x"
              f" wall, {cpu['fcn'] / cpu['naive']:.2f}x CPU")
    print(f"  vectorised / naive {wall['vec'] / wall['naive']:.2f}x wall, "
          f"{cpu['vec'] / cpu['naive']:.2f}x CPU")
    return wall["fcn"], wall["vec"], wall["naive"]


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

        from landuse.windows.fcn import choose_route

        print(f"cpu: {cpu_info()}")
        rates = matmul_rates()
        print(f"matmul float32 1024³, one thread: ONNX Runtime {rates['ort']:.1f} GFLOP/s "
              f"({rates['ort_cpu']:.1f} per CPU s), numpy {rates['numpy']:.1f} GFLOP/s "
              f"({rates['numpy_cpu']:.1f} per CPU s)")
        image = str(make_image(work / "scene.tif", args.pixel_m))
        with rasterio.open(image) as src:
            shape = (src.width, src.height)
        cnn = small_cnn_bundle(work / "small-cnn")
        padded = choose_route(small_cnn_bundle(work / "small-cnn-padded", pad=1), SIZE, STRIDE)
        print(f"image: real NAIP scene (2016) resampled to {args.pixel_m:g} m, "
              f"{shape[0]} × {shape[1]} px; windows of {SIZE} px every {STRIDE} px; "
              f"batch {args.batch_size}; 1 ONNX Runtime thread")
        print(f"small CNN with padded convolutions: {padded.name} ({padded.reason})")
        print(f"  {'route':<22} {'windows/s':>10} {'per CPU s':>10} {'MFLOP/win':>10} "
              f"{'GFLOP/s':>9} {'of matmul':>9} {'per CPU s':>9} {'of matmul':>9}")
        compare("linear (mean colour)", image, linear_bundle(work / "linear"), args,
                args.naive_windows * 5, shape[0], rates)
        fcn, _, slow = compare("small CNN", image, cnn, args, args.naive_windows, shape[0],
                               rates)
        if args.squeezenet:
            compare("SqueezeNet v1.1", str(SCENE), squeezenet_bundle(work / "squeezenet"),
                    args, 300, shape[0], rates)
        if not args.no_spark:
            one, spread1, warm1 = spark_rate(image, cnn, 1, args.batch_size, args.repeats)
            two, spread2, warm2 = spark_rate(image, cnn, 2, args.batch_size, args.repeats)
            print(f"spark local[1], small CNN, fully convolutional {one:9.1f} windows/s  "
                  f"(strips slowest/mean {spread1:.2f}; warm-up job {warm1:.1f} s)")
            print(f"spark local[2], small CNN, fully convolutional {two:9.1f} windows/s  "
                  f"(strips slowest/mean {spread2:.2f}; warm-up job {warm2:.1f} s)")
            print(f"speed-up 1 -> 2 workers    {two / one:9.2f}x   parallel efficiency "
                  f"{two / (2 * one):.2f}  (the seed: {SEED_MINUTES[0] / SEED_MINUTES[1]:.1f}x "
                  f"on 12 nodes, efficiency {SEED_MINUTES[0] / SEED_MINUTES[1] / 12:.2f})")
        print(f"ratio={fcn / slow:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
