"""County scale: tiling, scene-direct scoring on Spark local[2] and change detection, end to end.

The county: 65,563 tiles per vintage (the seed's Middlesex County count) times ``--scale``,
made of real NAIP pixels: the bundled Stutsman County quarter-quad (sample/naip, 2010 and 2016
vintages, 5 m) copied over adjoining quarter-quad footprints of its 1-degree block (real
pixels, synthetic placement: each copy is georeferenced at its own quarter-quad, cropped to 19
x 16 tiles so no two copies overlap, the last copies cropped to the exact tile count), with a
synthetic NLCD of 600 m parcels (5 % of parcels change between the two vintages).

Stages, each against its ceiling outside Spark measured in the same run:
  dataset  build_county (manifests only: training and scoring read the scenes), one
           process; ceiling: the same windows read by landuse.tiling.read_tile alone, one
           process. Then a training run's input (landuse.tiles.TileCache: the tiles read from
           the scenes once, scene by scene; each epoch's shuffled batches of 32 from the local
           cache, flipped and rotated, as the network's tensor) against what the network
           consumes (SqueezeNet head, frozen ImageNet base, Keras train_on_batch, this CPU).
  scoring  score_on_spark on local[2] with a deliberately cheap bundle (channel means ->
           linear -> softmax, so the data plane is what is measured): plan on the driver,
           read windows straight from the scenes, executors stage predictions, commit per
           county-year. Ceiling: the same bundle reading the same windows outside Spark
           (score_scene per scene, nothing written) on both cores, the faster of one process
           with two threads and two processes, on whole scenes up to 12,000 tiles, measured
           just before and just after the Spark job and averaged (this machine's speed
           drifts by about 10 % over minutes). After a warm-up job.
  change   run_change (predictions of both vintages, no embeddings); ceiling: reading both
           predictions and comparing their classes in pandas.
  label-free (full county) change features of both vintages on local[2]
           (landuse.change.features: one read of each window, SqueezeNet ONNX embedding and
           pixel statistics, parts written by the executors); ceiling: scene_features on
           the same windows outside Spark, a process per core, whole scenes up to 6,000
           tiles, before and after the Spark job, averaged. Then the driver's part: the
           scene pairs' IR-MAD fits (on Spark) and the no-change test over the county.
Then SqueezeNet (ImageNet backbone, untrained head) on a ``--squeezenet-tiles`` subset and
ResNet-50 (random weights: none can be downloaded here; speed does not depend on them) on a
``--resnet50-tiles`` subset, each against its own ceiling, and on
Azurite a ``--azurite-tiles`` county: blob requests per tile for tiling and for scoring, and
per scene open with and without landuse.raster.OPEN_ONCE (counted from Azurite's access log).

Memory: the driver's Python process and its Spark JVM (local mode: the executors live in the
JVM) and the Python workers, peak resident memory sampled every 0.2 s while scoring. The
tenth-size county runs first, so its peaks are not inflated by the full county's.

Run:  .venv/bin/python bench/county_scale.py [--scale 1.0] [--squeezenet-tiles 6000]
          [--resnet50-tiles 1500] [--azurite-tiles 3000] [--skip-squeezenet]
          [--skip-azurite] [--skip-label-free] [--stage label-free|dataset]
``--stage label-free`` builds the full county and measures only the label-free stage, ending
with ``ratio=<label-free features on Spark / ceiling>``. ``--stage dataset`` measures dataset
construction of the full county, a training epoch's input pipeline and requests per scene
open, ending with ``ratio=<dataset construction / ceiling>``.
Ends with ``ratio=<scoring end to end / ceiling>`` (cheap bundle, full county).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from landuse import labels, storage  # noqa: E402
from landuse.counties import County  # noqa: E402
from landuse.models.bundle import Bundle, BundleSpec, write_bundle  # noqa: E402
from landuse.models.preprocessing import PreprocessSpec  # noqa: E402
from machine import cpu_info  # noqa: E402

SEED_TILES = 65_563  # the seed's Middlesex County
TILE_M, RES_M, PX = 224.0, 5.0, 224
COPY_COLS, COPY_ROWS = 19, 16  # tiles per copy: narrower than any quarter-quad of the block
YEARS = (2010, 2016)
REAL = {2010: "m_4709963_se_14_1_20100629.tif", 2016: "m_4709963_se_14_1_20160816.tif"}
BLOCK = (47, 99)  # the sample's 1-degree block: lat 47-48 N, lon 99-100 W (UTM zone 14)
NLCD_CODES = (21, 22, 23, 24, 31, 41, 42, 43, 52, 71, 81, 82)
SPARK_CORES = 2
AZURITE = PROJECT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (  # Azurite's public development key
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")


# --- the county ---------------------------------------------------------------------------


def pieces_for(tiles: int) -> list[tuple[int, int]]:
    """(cols, rows) of each scene copy so the copies hold exactly ``tiles`` tiles."""
    full, rest = divmod(tiles, COPY_COLS * COPY_ROWS)
    pieces = [(COPY_COLS, COPY_ROWS)] * full
    rows, cols = divmod(rest, COPY_COLS)
    if rows:
        pieces.append((COPY_COLS, rows))
    if cols:
        pieces.append((cols, 1))
    if len(pieces) > 256:
        raise SystemExit(f"{tiles} tiles need {len(pieces)} quarter-quads; the block has 256")
    return pieces


def quarter_quads() -> Iterator[str]:
    """Quarter-quad ids of the sample's block, north-west first."""
    lat, lon = BLOCK
    for cell in range(1, 65):
        for quarter in ("nw", "ne", "sw", "se"):
            yield f"{lat:02d}{lon:03d}{cell:02d}_{quarter}"


def make_county(work: Path, name: str, tiles: int, naip: str | None = None) -> County:
    """A county of ``tiles`` tiles per vintage: real NAIP pixels, synthetic placement.

    Scenes go to ``naip`` (default: a local folder; an abfs:// URL uploads them)."""
    import rasterio
    from affine import Affine
    from rasterio.warp import transform

    from landuse.naip_scene import parse_scene_name

    folder = work / name / "naip"
    folder.mkdir(parents=True, exist_ok=True)
    sample = PROJECT / "sample" / "naip"
    real = {}
    for year, file in REAL.items():
        with rasterio.open(sample / file) as src:
            real[year] = (src.read(), src.profile)
    placed = []
    for (cols, rows), qq in zip(pieces_for(tiles), quarter_quads(), strict=False):
        width = math.floor(cols * TILE_M / RES_M) + 1  # one pixel more than the tiles need
        height = math.floor(rows * TILE_M / RES_M) + 1
        for year, file in REAL.items():
            scene_name = f"m_{qq}_14_1_{file.rsplit('_', 1)[1]}"
            left, top = parse_scene_name(scene_name).footprint[0], \
                parse_scene_name(scene_name).footprint[3]
            [x], [y] = transform("EPSG:4326", "EPSG:26914", [left], [top])
            x0, y0 = math.ceil(x / TILE_M) * TILE_M, math.floor(y / TILE_M) * TILE_M
            pixels, profile = real[year]
            profile = {**profile, "width": width, "height": height,
                       "transform": Affine(RES_M, 0, x0, 0, -RES_M, y0)}
            with rasterio.open(folder / scene_name, "w", **profile) as dst:
                dst.write(pixels[:, :height, :width])
            placed.append((x0, y0 - height * RES_M, x0 + width * RES_M, y0))
    nlcd = make_nlcd(work / name / "nlcd", placed)
    if naip:
        for path in sorted(folder.iterdir()):
            storage.write_bytes(storage.join(naip, path.name), path.read_bytes())
    lat, lon = BLOCK
    return County(name=name, bbox=(-(lon + 1) - 0.01, lat - 0.01, -lon + 0.01, lat + 1.01),
                  naip=naip or str(folder), nlcd=str(nlcd), synthetic=True)


def make_nlcd(folder: Path, placed: list[tuple[float, ...]]) -> Path:
    """Synthetic NLCD over the copies: 600 m parcels of random classes, two vintages."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    left, bottom = min(p[0] for p in placed) - 600, min(p[1] for p in placed) - 600
    right, top = max(p[2] for p in placed) + 600, max(p[3] for p in placed) + 600
    cell, parcel = 30.0, 20
    width, height = math.ceil((right - left) / cell), math.ceil((top - bottom) / cell)
    rng = np.random.default_rng(0)
    shape = (math.ceil(height / parcel), math.ceil(width / parcel))
    codes = np.asarray(NLCD_CODES, np.uint8)[rng.integers(0, len(NLCD_CODES), shape)]
    changed = codes.copy()
    flip = rng.random(shape) < 0.05
    changed[flip] = np.asarray(NLCD_CODES, np.uint8)[rng.integers(0, len(NLCD_CODES),
                                                                  int(flip.sum()))]
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": "uint8", "crs": "EPSG:26914", "nodata": 0, "compress": "deflate",
               "transform": Affine(cell, 0, left, 0, -cell, top), "tiled": True}
    for vintage, grid in ((2011, codes), (2016, changed)):
        full = np.kron(grid, np.ones((parcel, parcel), np.uint8))[:height, :width]
        with rasterio.open(folder / f"nlcd_{vintage}_synthetic.tif", "w", **profile) as dst:
            dst.write(full, 1)
    return folder


# --- bundles --------------------------------------------------------------------------------


def cheap_bundle(dest: Path) -> Bundle:
    """softmax(channel means of x / 255 @ W + b) over labels.CLASSES, as an ONNX bundle."""
    from onnx import TensorProto, helper, numpy_helper

    n = len(labels.CLASSES)
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "cheap",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", PX, PX, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", n])],
        initializer=[numpy_helper.from_array(rng.normal(0, 4, (3, n)).astype(np.float32), "W"),
                     numpy_helper.from_array(rng.normal(0, 1, n).astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    spec = BundleSpec(schema_version=1, name="bench-cheap", classes=labels.CLASSES,
                      preprocessing=PreprocessSpec(input_size=PX, scale=1 / 255),
                      backbone="none", method="imported", formats=("onnx",),
                      onnx_input="image", onnx_output="probabilities")
    return write_bundle(dest, spec,
                        lambda f: (f / "model.onnx").write_bytes(model.SerializeToString()))


def network_bundle(backbone: str, weights: str, dest: Path) -> Bundle:
    """A backbone + an untrained softmax head over the classes, as bench/scoring.py builds
    it (SqueezeNet with its shipped ImageNet weights; ResNet-50 with random ones, since its
    ImageNet weights cannot be downloaded here and speed does not depend on them)."""
    sys.path.insert(0, str(PROJECT / "bench"))
    from scoring import build_bundle  # bench/scoring.py: the same bundles it measures

    return build_bundle(backbone, weights, dest)


# --- measuring ------------------------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += _children(p)
    return found


@contextmanager
def peak_memory(me: int) -> Iterator[dict[str, float]]:
    """Peak RSS (MiB), sampled every 0.2 s: the Python driver ``me``, its JVM (with the
    local-mode executors), and the Python workers together."""
    peaks = {"driver_python": 0.0, "driver_jvm": 0.0, "python_workers": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peaks["driver_python"] = max(peaks["driver_python"], _rss_kb(me) / 1024)
            for child in _children(me):
                try:
                    is_jvm = b"java" in Path(f"/proc/{child}/cmdline").read_bytes()[:4096]
                except OSError:
                    continue
                if is_jvm:
                    peaks["driver_jvm"] = max(peaks["driver_jvm"], _rss_kb(child) / 1024)
                    workers = [p for p in _tree(child) if p != child]
                    peaks["python_workers"] = max(peaks["python_workers"],
                                                  sum(_rss_kb(p) for p in workers) / 1024)
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def manifests(root: str, county: str) -> str:
    return storage.join(root, "naip", county, "*", "manifest.parquet")


def scoreable_rows(root: str, county: str) -> pd.DataFrame:
    from landuse.scoring.predict import load_source

    return load_source(manifests(root, county))


def tiling_ceiling(rows: pd.DataFrame, limit: int = 3000) -> float:
    """Tiles/s of read_tile alone over the first ``limit`` tiles, scene by scene."""
    from landuse.raster import open_raster
    from landuse.tiling import read_tile

    rows = rows.head(limit)
    start = time.perf_counter()
    for scene, tiles in rows.groupby("scene_url"):
        with open_raster(scene) as src:
            for t in tiles.itertuples():
                read_tile(src, scene, (t.minx, t.miny, t.maxx, t.maxy), ("red", "green", "blue"),
                          PX)
    return len(rows) / (time.perf_counter() - start)


def epoch_pipeline(root: str, county: str, tiles: int, batch: int = 32) -> dict[str, float]:
    """Tiles/s of a training run's input (its tiles read from the scenes once, scene by
    scene, then each epoch's shuffled batches from the local cache, augmented, as tensors)
    and of the network consuming it (SqueezeNet head, frozen base)."""
    import keras

    from landuse.models.backbones import build_backbone
    from landuse.models.data import augment
    from landuse.models.preprocessing import to_tensor
    from landuse.tiles import TileCache

    frames = [pd.read_parquet(u) for u in storage.glob(manifests(root, county))]
    trainable = pd.concat(frames, ignore_index=True).query("trainable")
    rows = trainable.sample(n=min(tiles, len(trainable)), random_state=0)
    backbone = build_backbone("squeezenet", "imagenet")
    spec = backbone.preprocessing
    rng = np.random.default_rng(0)
    rates = {}
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as folder:
        cache = TileCache(rows, spec, folder)
        _, seconds = timed(cache.all)  # what training does first: each scene read once
        rates["scenes"] = len(rows) / seconds
        order = rng.permutation(len(rows))
        start = time.perf_counter()
        for i in range(0, len(order), batch):
            to_tensor(augment(cache.get(order[i:i + batch]), rng), spec)
        rates["epoch"] = len(rows) / (time.perf_counter() - start)
        x = to_tensor(cache.get(np.arange(batch)), spec)
    base = backbone.model
    base.trainable = False
    inputs = keras.Input(spec.input_shape)
    hidden = keras.layers.Dense(256, activation="relu")(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(len(labels.CLASSES),
                                                   activation="softmax")(hidden))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    y = rng.integers(0, len(labels.CLASSES), batch)
    model.train_on_batch(x, y)  # build and warm up
    steps = 20
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    rates["network"] = steps * batch / (time.perf_counter() - start)
    return {**rates, "tiles": len(rows)}


def scoring_ceiling(rows: pd.DataFrame, bundle: Bundle, batch: int,
                    limit: int = 12_000) -> dict[str, float]:
    """Tiles/s of the same bundle reading the same windows outside Spark, all cores, nothing
    written, in two layouts: one process with a thread per core sharing one model, and a
    process per core (Spark's layout without Spark; each thread's Python holds the GIL, so
    threads can fall behind). Whole scenes up to about ``limit`` tiles (a rate: the full
    county would only repeat the same scenes' pixels)."""
    import multiprocessing

    from landuse.models.runners import OnnxRunner
    from landuse.scoring.predict import score_scene

    groups: list[pd.DataFrame] = []
    for _, group in rows.groupby("scene_url"):
        if sum(len(g) for g in groups) >= limit:
            break
        groups.append(group)
    runner = OnnxRunner(bundle, threads=1)
    score_scene(groups[0].head(batch), runner, batch)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(SPARK_CORES) as threads:
        done = sum(len(f) for f in threads.map(lambda g: score_scene(g, runner, batch), groups))
    rates = {"threads": done / (time.perf_counter() - start)}
    with ProcessPoolExecutor(SPARK_CORES, mp_context=multiprocessing.get_context("fork"),
                             initializer=_open_runner, initargs=(str(bundle.path),)) as procs:
        list(procs.map(_score_scene, [(groups[0].head(batch), batch)] * 2 * SPARK_CORES))
        start = time.perf_counter()
        done = sum(procs.map(_score_scene, [(g, batch) for g in groups]))
    rates["processes"] = done / (time.perf_counter() - start)
    return rates


_RUNNER: Any = None  # a ceiling process's runner


def _open_runner(bundle_path: str) -> None:
    global _RUNNER
    from landuse.models.bundle import load_bundle
    from landuse.models.runners import OnnxRunner

    _RUNNER = OnnxRunner(load_bundle(bundle_path), threads=1)


def _score_scene(job: tuple[pd.DataFrame, int]) -> int:
    from landuse.scoring.predict import score_scene

    return len(score_scene(job[0], _RUNNER, job[1]))


def features_ceiling(rows: pd.DataFrame, batch: int, limit: int = 6000) -> float:
    """Tiles/s of scene_features on the same windows outside Spark, a process per core
    (Spark's layout without Spark), whole scenes up to about ``limit`` tiles."""
    import multiprocessing

    groups: list[pd.DataFrame] = []
    for _, group in rows.groupby("scene_url"):
        if sum(len(g) for g in groups) >= limit:
            break
        groups.append(group)
    with ProcessPoolExecutor(SPARK_CORES, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_features_worker) as procs:
        list(procs.map(_scene_features, [(groups[0].head(batch), batch)] * 2 * SPARK_CORES))
        start = time.perf_counter()
        done = sum(procs.map(_scene_features, [(g, batch) for g in groups]))
    return done / (time.perf_counter() - start)


def _features_worker() -> None:
    sys.path.insert(0, str(PROJECT / "include"))
    os.environ["OMP_NUM_THREADS"] = "1"


def _scene_features(job: tuple[pd.DataFrame, int]) -> int:
    from landuse.change.features import backbone_model, scene_features

    model, spec = backbone_model()
    return len(scene_features(job[0], model, spec, PX, job[1]))


def label_free(spark: Any, root: str, name: str, batch: int) -> dict[str, float]:
    """The label-free stage on a tiled county: features of both vintages on Spark against
    the ceiling, then the driver's statistics (IR-MAD fits on Spark, the test)."""
    from landuse.change import features, normalise, significance

    rows = scoreable_rows(root, name)
    before = features_ceiling(rows, batch)
    frames, spark_s = timed(lambda: [features.county_year_features(
        root, name, y, spark=spark, batch_size=batch) for y in YEARS])
    after = features_ceiling(rows, batch)
    ceiling = (before + after) / 2
    tiles = sum(len(f) for f in frames)
    errors = sum(int(f["error"].notna().sum()) for f in frames)
    a, b = (f.loc[frames[0].index.intersection(frames[1].index)] for f in frames)
    scene = {y: rows[rows["year"] == y].set_index("tile_id")["scene_url"] for y in YEARS}
    pairs = pd.DataFrame({"a": scene[YEARS[0]].reindex(a.index).to_numpy(),
                          "b": scene[YEARS[1]].reindex(a.index).to_numpy()})
    fits, fit_s = timed(lambda: normalise.normalise_pairs(
        list(pairs.dropna().itertuples(index=False, name=None)), spark))
    start = time.perf_counter()
    raw = [f[list(normalise.RAW_STATISTICS)].to_numpy(float) for f in (a, b)]
    stats_b = np.full((len(a), len(normalise.STATISTICS)), np.nan)
    for key, index in pairs.groupby(["a", "b"]).groups.items():
        stats_b[index] = normalise.normalised_statistics(raw[1][index], fits[key])
    test = significance.significant_change(normalise.normalised_statistics(raw[0]), stats_b)
    test_s = time.perf_counter() - start
    print(f"  label-free {tiles / spark_s:8.1f} tiles/s  ceiling {ceiling:8.1f}  ratio "
          f"{tiles / spark_s / ceiling:.3f}  (local[2], features of {tiles:,} tiles in "
          f"{spark_s:.1f} s, {errors} error rows; ceiling before / after {before:.1f} / "
          f"{after:.1f})\n"
          f"    driver: {len(fits)} scene pairs normalised in {fit_s:.1f} s (IR-MAD on Spark), "
          f"no-change test over {len(a):,} tiles in {test_s:.1f} s: {int(test.flagged.sum())} "
          f"flagged at FDR {test.fdr:g}", flush=True)
    return {"label_free": tiles / spark_s, "label_free_ceiling": ceiling}


def best_of(before: dict[str, float], after: dict[str, float]) -> tuple[float, str]:
    """The ceiling: the faster layout, its rates before and after the Spark run averaged
    (this machine's speed drifts by 10 % over minutes), and how it was made up."""
    layout = max(before, key=lambda k: before[k] + after[k])
    text = ", ".join(f"{k} {before[k]:.1f} / {after[k]:.1f}" for k in before)
    return (before[layout] + after[layout]) / 2, f"ceiling before / after: {text}"


def change_ceiling(root: str, county: str) -> float:
    """Tiles/s of reading both vintages' predictions and comparing their classes."""
    from landuse.scoring.spark import predictions_url

    start = time.perf_counter()
    a, b = (storage.read_parquet(predictions_url(root + "/predictions", county, y)).to_pandas()
            for y in YEARS)
    both = a[["tile_id", "predicted"]].merge(b[["tile_id", "predicted"]], on="tile_id")
    int((both["predicted_x"] != both["predicted_y"]).sum())
    return len(both) / (time.perf_counter() - start)


def run_county(spark: Any, work: Path, name: str, tiles: int, bundle: Bundle,
               batch: int) -> dict[str, Any]:
    """Tiling, scoring and change detection of one county; rates, ceilings, peaks."""
    from landuse.change.run import run_change
    from landuse.tiling import TilingConfig, build_county

    root = str(work / name / "out")
    county, made = timed(lambda: make_county(work, name, tiles))
    results, tiling_s = timed(lambda: build_county(county, YEARS, root, TilingConfig()))
    os.sync()  # the write-back would otherwise land on the scoring that follows
    total = sum(r.tiles for r in results)
    trainable = sum(r.trainable for r in results)
    if total != tiles * len(YEARS):
        raise RuntimeError(f"{name}: {total} tiles, expected {tiles * len(YEARS)}")
    rows = scoreable_rows(root, name)
    tile_ceiling = tiling_ceiling(rows)
    before = scoring_ceiling(rows, bundle, batch)
    scored, wall_s, peaks = score_job(manifests(root, name), bundle, root + "/predictions",
                                      batch)
    scoring_s = scored["seconds"]
    if scored["tiles"] != len(rows) or scored["errors"]:
        raise RuntimeError(f"{name}: scored {scored['tiles']} ({scored['errors']} errors) "
                           f"of {len(rows)}")
    ceiling, made_of = best_of(before, scoring_ceiling(rows, bundle, batch))
    _, change_s = timed(lambda: run_change(root, name, YEARS[0], YEARS[1],
                                                reference="predictions", embeddings=False))
    out = {
        "tiles": tiles, "made_s": made, "trainable": trainable,
        "tiling": total / tiling_s, "tiling_ceiling": tile_ceiling,
        "scoring": scored["tiles"] / scoring_s, "scoring_ceiling": ceiling,
        "scoring_s": scoring_s, "change": tiles / change_s,
        "change_ceiling": change_ceiling(root, name), "peaks": peaks,
        "chips": sum(1 for _ in (work / name / "out" / "naip").rglob("*.png")),
    }
    print(f"county {name}: {tiles:,} tiles x {len(YEARS)} vintages ({made:.0f} s to make), "
          f"{trainable:,} trainable (chips written: {out['chips']:,})\n"
          f"  dataset  {out['tiling']:8.1f} tiles/s  ceiling {tile_ceiling:8.1f}  "
          f"ratio {out['tiling'] / tile_ceiling:.3f}  (one process)\n"
          f"  scoring  {out['scoring']:8.1f} tiles/s  ceiling {ceiling:8.1f}  "
          f"ratio {out['scoring'] / ceiling:.3f}  (local[2], {scored['tiles']:,} tiles, "
          f"{scoring_s:.1f} s in score_on_spark; {wall_s:.1f} s with JVM start and exit; "
          f"{made_of})\n"
          f"  change   {out['change']:8.1f} tiles/s  ceiling {out['change_ceiling']:8.1f}  "
          f"ratio {out['change'] / out['change_ceiling']:.3f}  (report published, both vintages)\n"
          f"  peak RSS while scoring: driver python {peaks['driver_python']:.0f} MiB, "
          f"driver JVM + executors {peaks['driver_jvm']:.0f} MiB, python workers "
          f"{peaks['python_workers']:.0f} MiB", flush=True)
    return out


def score_job(source: str, bundle: Bundle, out: str, batch: int
              ) -> tuple[dict[str, Any], float, dict[str, float]]:
    """The packaged Spark job (landuse.scoring.job, local[2]) in its own process, so its
    driver's memory is the scoring driver's alone: (its summary, wall seconds, peaks)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "include")}
    cmd = [sys.executable, "-m", "landuse.scoring.job", "--source", source, "--bundle",
           str(bundle.path), "--out", out, "--batch-size", str(batch), "--master",
           f"local[{SPARK_CORES}]"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            text=True)
    with peak_memory(proc.pid) as peaks:
        stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"scoring job failed ({proc.returncode}): {stdout[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), wall, peaks


def network(spark: Any, work: Path, name: str, backbone: str, weights: str, n: int,
            batch: int) -> float:
    """A real network on the first ``n`` tiles (whole scenes) of the county's 2016 manifest:
    Spark local[2] against the same bundle reading the same windows outside Spark."""
    import pyarrow.parquet as pq

    from landuse.scoring.spark import score_on_spark
    from landuse.tiling import manifest_url

    root = str(work / name / "out")
    table = pq.read_table(manifest_url(root, name, YEARS[1]))
    frame = table.to_pandas()
    frame = frame[frame["status"] != "empty"]
    scenes = frame.groupby("scene_url", sort=True).size().cumsum()
    keep = set(scenes[scenes.shift(fill_value=0) < n].index)
    subset = table.filter(pd.Series(table.column("scene_url").to_pylist()).isin(keep).to_numpy())
    path = work / f"{backbone}-subset.parquet"
    pq.write_table(subset, path)
    bundle, built = timed(lambda: network_bundle(backbone, weights, work / f"bundle-{backbone}"))
    warm = work / f"{backbone}-warm.parquet"
    pq.write_table(subset.slice(0, 64), warm)
    score_on_spark(spark, str(warm), bundle.path, str(work / f"{backbone}-warm"),
                   batch_size=batch)
    rows = scoreable_rows_of(str(path))
    before = scoring_ceiling(rows, bundle, batch, limit=n // 2)
    result, seconds = timed(lambda: score_on_spark(spark, str(path), bundle.path,
                                                   str(work / f"{backbone}-out"),
                                                   batch_size=batch))
    rate = result.tiles / seconds
    ceiling, made_of = best_of(before, scoring_ceiling(rows, bundle, batch, limit=n // 2))
    print(f"{backbone} ({weights} weights; {built:.0f} s to build): {result.tiles:,} tiles  "
          f"spark local[2] {rate:.1f} tiles/s  ceiling {ceiling:.1f} ({made_of})  "
          f"ratio {rate / ceiling:.3f}", flush=True)
    return rate / ceiling


def scoreable_rows_of(source: str) -> pd.DataFrame:
    from landuse.scoring.predict import load_source

    return load_source(source)


# --- Azurite --------------------------------------------------------------------------------


@contextmanager
def azurite(work: Path) -> Iterator[Callable[[], int]]:
    """Azurite on a free loopback port with a ``bench`` container, its connection string in
    the environment; yields a function giving the requests it has answered so far (from its
    access log)."""
    from azure.storage.blob import BlobServiceClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log_path = work / "azurite-access.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
             str(work / "azurite"), "--skipApiVersionCheck", "--disableTelemetry", "--loose"],
            stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "NODE_OPTIONS": "--max-old-space-size=512"})
    try:
        for _ in range(150):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        conn = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = conn
        BlobServiceClient.from_connection_string(conn).create_container("bench")

        def requests() -> int:
            text = log_path.read_text(errors="replace")
            return len(re.findall(r'"(?:GET|PUT|HEAD|POST|DELETE) ', text))

        yield requests
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def requests_per_open(requests: Callable[[], int], scene: str, opens: int = 20
                      ) -> dict[str, float]:
    """Blob requests per scene open and 8 x 8 read, with GDAL's side-car probing (the
    project's settings before landuse.raster.OPEN_ONCE) and without it (now)."""
    from landuse import raster
    from landuse.raster import open_raster, read_checked

    saved = dict(raster._REMOTE_OPTIONS)
    probing = {k: v for k, v in saved.items() if k not in raster.OPEN_ONCE}  # GDAL's defaults
    out = {}
    for name, options in (("before", probing), ("after", saved)):
        raster._REMOTE_OPTIONS.clear()
        raster._REMOTE_OPTIONS.update(options)
        try:
            start = requests()
            for _ in range(opens):
                with open_raster(scene) as src:
                    read_checked(src, scene, window=((0, 8), (0, 8)))
            out[name] = (requests() - start) / opens
        finally:
            raster._REMOTE_OPTIONS.clear()
            raster._REMOTE_OPTIONS.update(saved)
    return out


def azurite_requests(work: Path, tiles: int, bundle: Bundle, batch: int) -> None:
    """Blob requests per tile for tiling and for scoring a county held in Azurite, and per
    scene open."""
    from landuse.scoring.spark import score_on_spark
    from landuse.spark import local_spark
    from landuse.tiling import TilingConfig, build_county

    if not AZURITE.exists():
        print(f"azurite: not installed at {AZURITE} (scripts/setup.sh installs it); skipped")
        return
    with azurite(work) as requests:
        root = "abfs://bench/landuse"
        county = make_county(work, "azurite-county", tiles, naip="abfs://bench/naip")
        before = requests()
        results = build_county(county, YEARS, root, TilingConfig())
        tiled = requests() - before
        total = sum(r.tiles for r in results)
        conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
        spark = local_spark("bench-azurite", master=f"local[{SPARK_CORES}]",
                            conf={"spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING": conn})
        try:
            before = requests()
            result = score_on_spark(spark, storage.join(root, "naip", county.name, "*",
                                                        "manifest.parquet"),
                                    bundle.path, root + "/predictions", batch_size=batch)
            scored = requests() - before
        finally:
            spark.stop()
        scene = storage.glob("abfs://bench/naip/*.tif")[0]
        per_open = requests_per_open(requests, scene)
        print(f"azurite: {total:,} tiles ({tiles:,} x {len(YEARS)} vintages; scenes, manifests "
              f"and predictions in blob storage)\n"
              f"  dataset  {tiled:,} blob requests = {tiled / total:.3f} per tile "
              f"(scene reads, manifests)\n"
              f"  scoring  {scored:,} blob requests = {scored / result.tiles:.4f} per tile "
              f"(manifest reads, scene range reads, staged parts, commit)\n"
              f"  scene open + 8x8 read: {per_open['before']:.1f} requests with side-car "
              f"probing (before), {per_open['after']:.1f} with OPEN_ONCE (now)", flush=True)


def dataset_stage(work: Path, full: int, epoch_tiles: int) -> float:
    """Dataset construction of the full county against its read ceiling, a training
    epoch's input pipeline against the network, and requests per scene open on Azurite;
    returns the dataset construction ratio."""
    from landuse.tiling import TilingConfig, build_county

    county = make_county(work, "county-full", full)
    root = str(work / "county-full" / "out")
    results, seconds = timed(lambda: build_county(county, YEARS, root, TilingConfig()))
    total = sum(r.tiles for r in results)
    ceiling = tiling_ceiling(scoreable_rows(root, "county-full"))
    rate = total / seconds
    pngs = sum(1 for _ in (work / "county-full" / "out").rglob("*.png"))
    print(f"  dataset  {rate:8.1f} tiles/s  ceiling {ceiling:8.1f}  ratio {rate / ceiling:.3f}  "
          f"(one process, {total:,} tiles in {seconds:.0f} s, "
          f"{sum(r.trainable for r in results):,} trainable, {pngs} chips)", flush=True)
    epoch = epoch_pipeline(root, "county-full", epoch_tiles)
    bound = "the network" if epoch["network"] < epoch["epoch"] else "the input pipeline"
    print(f"  training input, {epoch['tiles']:,} trainable tiles: read from the scenes once "
          f"(scene by scene, into the local cache) {epoch['scenes']:.1f} tiles/s; an epoch of "
          f"shuffled batches of 32 from the cache, augmented, as tensors {epoch['epoch']:.1f} "
          f"tiles/s; the network (SqueezeNet head, frozen ImageNet base, this CPU) consumes "
          f"{epoch['network']:.1f} tiles/s: the bound is {bound}", flush=True)
    if AZURITE.exists():
        with azurite(work) as requests:
            name = sorted(os.listdir(county.naip))[0]
            scene = f"abfs://bench/naip/{name}"
            storage.write_bytes(scene, (Path(county.naip) / name).read_bytes())
            per_open = requests_per_open(requests, scene)
        print(f"  scene open + 8x8 read on Azurite: {per_open['before']:.1f} requests with "
              f"side-car probing (before), {per_open['after']:.1f} with OPEN_ONCE (now)",
              flush=True)
    return rate / ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="county size as a share of the seed's 65,563 tiles")
    parser.add_argument("--squeezenet-tiles", type=int, default=6000)
    parser.add_argument("--resnet50-tiles", type=int, default=1500,
                        help="ResNet-50 runs about 10 tiles/s per core: a subset keeps it short")
    parser.add_argument("--azurite-tiles", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-squeezenet", action="store_true",
                        help="skip both real networks (SqueezeNet and ResNet-50)")
    parser.add_argument("--skip-azurite", action="store_true")
    parser.add_argument("--skip-label-free", action="store_true")
    parser.add_argument("--stage", choices=["all", "label-free", "dataset"], default="all",
                        help="label-free / dataset: build the full county and measure only "
                             "that stage")
    parser.add_argument("--epoch-tiles", type=int, default=4000,
                        help="trainable tiles of the training-epoch measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)

    from landuse.spark import local_spark

    full = max(1, round(SEED_TILES * args.scale))
    tenth = max(1, full // 10)
    print(f"county_scale: --scale {args.scale}: {full:,} tiles (tenth: {tenth:,}) per vintage; "
          f"cpu: {cpu_info()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-county-"))
    try:
        if args.stage == "dataset":
            print(f"ratio={dataset_stage(work, full, args.epoch_tiles):.3f}")
            return
        bundle = cheap_bundle(work / "bundle-cheap")
        spark = local_spark("bench-county", master=f"local[{SPARK_CORES}]")
        if args.stage == "label-free":
            from landuse.tiling import TilingConfig, build_county

            county = make_county(work, "county-full", full)
            root = str(work / "county-full" / "out")
            build_county(county, YEARS, root, TilingConfig())
            measured = label_free(spark, root, "county-full", args.batch_size)
            print(f"ratio={measured['label_free'] / measured['label_free_ceiling']:.3f}")
            return
        warm_county = make_county(work, "warm-up", 300)
        from landuse.scoring.spark import score_on_spark
        from landuse.tiling import TilingConfig, build_county

        [warm] = build_county(warm_county, [2016], str(work / "warm-up" / "out"), TilingConfig())
        score_on_spark(spark, warm.manifest_url, bundle.path, str(work / "warm-up" / "pred"))
        small = run_county(spark, work, "county-tenth", tenth, bundle, args.batch_size)
        big = run_county(spark, work, "county-full", full, bundle, args.batch_size)
        if not args.skip_label_free:
            label_free(spark, str(work / "county-full" / "out"), "county-full", args.batch_size)
        growth = {k: big["peaks"][k] / max(small["peaks"][k], 1e-9) for k in big["peaks"]}
        print("peak memory, full county / tenth: " +
              ", ".join(f"{k} {v:.2f}x" for k, v in growth.items()), flush=True)
        if not args.skip_squeezenet:
            for backbone, weights, n in (("squeezenet", "imagenet", args.squeezenet_tiles),
                                         ("resnet50", "random", args.resnet50_tiles)):
                network(spark, work, "county-full", backbone, weights, min(n, full),
                        args.batch_size)
        spark.stop()
        if not args.skip_azurite:
            azurite_requests(work, args.azurite_tiles, bundle, args.batch_size)
        print(f"load average {os.getloadavg()[0]:.1f} at end")
        print(json.dumps({"scale": args.scale, "tiles": full,
                          "scoring_tiles_per_s": round(big["scoring"], 1),
                          "ceiling_tiles_per_s": round(big["scoring_ceiling"], 1)}))
        print(f"ratio={big['scoring'] / big['scoring_ceiling']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
