"""Sliding-window fixtures: a synthetic collage with objects at known places, and models.

The collage is the seed's problem in miniature: small objects of known classes ("car": red,
"boat": blue, plus green distractors that are neither) scattered over a textured background,
at random offsets from the window grid, written as a georeferenced GeoTIFF (UTM, 1 m) and
as a plain PNG. The model is a hand-built ONNX classifier on the window's mean colour
(``onnx_kit``), so whether a window fires depends on how much of an object it covers: a
window must cover about a third of an object to fire, and every object is covered that
much by at least four overlapping windows — the duplicates NMS has to merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from landuse.models.preprocessing import PreprocessSpec

from .cnn_kit import CNN_PREPROCESSING, write_cnn_bundle

CLASSES = ("background", "car", "boat")
OBJECT = 32  # object side, px (the seed's CIFAR tiles)
CELL = 96  # one object (or none) per cell, so objects stay apart
COLOURS = {"car": (215, 45, 40), "boat": (40, 70, 205), "distractor": (60, 165, 70)}
ORIGIN = (486_000.0, 5_209_000.0)  # UTM 14N, near the bundled NAIP scene
CRS = "EPSG:26914"


@dataclass(frozen=True)
class Collage:
    """The collage files and where its objects are."""

    tif: Path
    png: Path
    pixels: np.ndarray  # (H, W, 3) uint8
    truth: pd.DataFrame  # class, row0, col0, row1, col1 of every car and boat


def make_collage(folder: Path, rows: int = 4, cols: int = 5, seed: int = 3) -> Collage:
    """A textured background with a car, boat, distractor or nothing in each CELL square."""
    rng = np.random.default_rng(seed)
    height, width = rows * CELL + 8, cols * CELL + 12  # ragged edges: margins < stride
    base = np.array([95, 110, 80], dtype=np.int16)
    pixels = base + rng.integers(-25, 26, (height, width, 3), dtype=np.int16)
    kinds = ["car", "boat", "distractor", "car", "boat", "none"]
    truth = []
    for r in range(rows):
        for c in range(cols):
            kind = kinds[rng.integers(len(kinds))]
            if kind == "none":
                continue
            top = r * CELL + int(rng.integers(8, CELL - OBJECT - 8))
            left = c * CELL + int(rng.integers(8, CELL - OBJECT - 8))
            texture = rng.integers(-30, 31, (OBJECT, OBJECT, 3), dtype=np.int16)
            pixels[top:top + OBJECT, left:left + OBJECT] = np.array(COLOURS[kind]) + texture
            if kind != "distractor":
                truth.append((kind, top, left, top + OBJECT, left + OBJECT))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    tif, png = folder / "collage.tif", folder / "collage.png"
    with rasterio.open(tif, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8", crs=CRS, transform=from_origin(*ORIGIN, 1.0, 1.0),
                       tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(pixels.transpose(2, 0, 1))
    Image.fromarray(pixels).save(png)
    frame = pd.DataFrame(truth, columns=["class", "row0", "col0", "row1", "col1"])
    return Collage(tif, png, pixels, frame)


def colour_weights(k: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean-colour classifier: car = red excess, boat = blue excess, background = 0.

    Pixels are scaled to [0, 1]; a window fires (p >= 0.9) once about a third of it is an
    object."""
    weights = np.zeros((3, 3), dtype=np.float32)
    weights[:, 1] = k * np.array([1.0, -0.5, -0.5])
    weights[:, 2] = k * np.array([-0.5, -0.5, 1.0])
    bias = np.array([0.0, -0.22 * k, -0.18 * k], dtype=np.float32)
    return weights, bias


def colour_probabilities(windows: np.ndarray) -> np.ndarray:
    """The colour model's probabilities for (N, h, w, 3) uint8 windows, in numpy."""
    weights, bias = colour_weights()
    logits = (windows.astype(np.float64) / 255).mean(axis=(1, 2)) @ weights + bias
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


@pytest.fixture(scope="session")
def colour_reference():
    """:func:`colour_probabilities`: what the colour bundles must output, in numpy."""
    return colour_probabilities


@pytest.fixture(scope="session")
def collage(tmp_path_factory: pytest.TempPathFactory) -> Collage:
    """The synthetic collage (GeoTIFF and PNG) and its ground truth."""
    return make_collage(tmp_path_factory.mktemp("collage"))


def _colour_bundle(folder: Path, onnx_kit, size: int, layout: str = "NHWC") -> Path:
    weights, bias = colour_weights()
    spec = PreprocessSpec(input_size=size, scale=1 / 255, layout=layout)
    return onnx_kit.bundle(folder, spec, CLASSES, weights=weights, bias=bias)


@pytest.fixture(scope="session")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory, onnx_kit) -> Path:
    """The colour classifier on 32 px input (windows go in as they are)."""
    return _colour_bundle(tmp_path_factory.mktemp("bundles") / "colour-32", onnx_kit, OBJECT)


@pytest.fixture(scope="session")
def colour_bundle_64(tmp_path_factory: pytest.TempPathFactory, onnx_kit) -> Path:
    """The same classifier on 64 px NCHW input (windows are resized and transposed)."""
    return _colour_bundle(tmp_path_factory.mktemp("bundles") / "colour-64", onnx_kit, 64,
                          "NCHW")


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid-convolution small CNN on 32 px NHWC input, three classes."""
    return write_cnn_bundle(tmp_path_factory.mktemp("cnn") / "valid", CLASSES,
                            CNN_PREPROCESSING)
