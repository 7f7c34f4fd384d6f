"""Preprocessing: training and scoring feed the network bit-identical tensors; the spec's
channel order, layout, scale, mean and std against hand-computed values; decode errors."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import ValidationError

from landuse.models.backbones import MOBILENET_V1_SPEC
from landuse.models.bundle import load_bundle
from landuse.models.data import augment
from landuse.models.keras_trainer import _batches
from landuse.models.preprocessing import (
    CAFFE_BGR,
    CNTK_ALEXNET,
    TF_RESNET50,
    ImageError,
    PreprocessSpec,
    decode,
    load_batch,
    to_tensor,
)
from landuse.models.runners import OnnxRunner
from landuse.tiles import TileCache, read_tiles
from landuse.tiling import encode_png


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


# --- THE parity test: what training feeds the network is what scoring feeds it ----------------


@pytest.fixture(scope="module")
def parity_tiles(fixtures_dir, tiny_dataset, tmp_path_factory):
    """URLs of the real EPIC tile (224 px) and a real synthetic tile (64 px, so resized)."""
    folder = tmp_path_factory.mktemp("parity")
    epic = folder / "epic.png"
    epic.write_bytes((fixtures_dir / "epic_sample_tile_developed.png").read_bytes())
    synthetic = folder / "synthetic.png"  # a chip as tiling exports it
    pixels = read_tiles(tiny_dataset.train.iloc[:1], PreprocessSpec(input_size=64))[0]
    synthetic.write_bytes(encode_png(pixels.transpose(2, 0, 1)))
    return [str(epic), str(synthetic)]


@pytest.mark.parametrize("spec", [CAFFE_BGR, TF_RESNET50], ids=["caffe-bgr", "tf-resnet50"])
def test_training_and_scoring_feed_bit_identical_tensors(
    spec, parity_tiles, onnx_kit, tmp_path
):
    # Training: the trainer's own batches (no augmentation on the evaluation path).
    labels = np.zeros(len(parity_tiles), dtype=np.int64)
    chips = pd.DataFrame({"tile_id": ["epic", "synthetic"], "image_url": parity_tiles})
    x_batches, y = _batches(TileCache(chips, spec, tmp_path), labels, spec, 16, False, 0)[0]
    x_train = to_tensor(read_tiles(chips, spec), spec)
    # Scoring: a runner's predict on the decoded bytes of the same files; record its input.
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "bundle", spec))
    runner = OnnxRunner(bundle)
    fed: list[np.ndarray] = []
    predict_tensor = runner.predict_tensor

    def record(x: np.ndarray) -> np.ndarray:
        fed.append(x)
        return predict_tensor(x)

    runner.predict_tensor = record  # type: ignore[method-assign]
    datas = [open(url, "rb").read() for url in parity_tiles]
    tiles = np.stack([decode(d, spec, url) for d, url in zip(datas, parity_tiles, strict=True)])
    probabilities = runner.predict(tiles)
    [x_score] = fed

    assert x_batches.shape == (2, 224, 224, 3) and list(y) == [0, 0]
    for x in (x_train, x_score, load_batch(datas, spec)):
        assert x.dtype == x_batches.dtype == np.float32
        assert x.shape == x_batches.shape
        assert x.tobytes() == x_batches.tobytes()  # bit-identical, not merely close
    np.testing.assert_array_equal(probabilities, predict_tensor(x_batches))


def test_training_augmentation_only_moves_pixels(parity_tiles, tmp_path):
    spec = CAFFE_BGR
    labels = np.zeros(len(parity_tiles), dtype=np.int64)
    chips = pd.DataFrame({"tile_id": ["epic", "synthetic"], "image_url": parity_tiles})
    cache = TileCache(chips, spec, tmp_path)
    plain = _batches(cache, labels, spec, 16, False, 0)[0][0]
    augmented = _batches(cache, labels, spec, 16, True, 3)[0][0]
    for a, b in zip(plain, augmented, strict=True):
        np.testing.assert_array_equal(np.sort(a, axis=None), np.sort(b, axis=None))
    rng = np.random.default_rng(0)
    tiles = read_tiles(chips, spec)
    for tile, moved in zip(tiles, augment(tiles, rng), strict=True):
        variants = [np.rot90(tile, k) for k in range(4)]
        variants += [v[:, ::-1] for v in variants]
        assert any(np.array_equal(moved, v) for v in variants)


# --- semantics, checked against hand-computed values ---------------------------------------


def _tile(size: int = 8) -> np.ndarray:
    tile = np.zeros((1, size, size, 3), dtype=np.uint8)
    tile[0, 0, 0] = (10, 20, 30)
    tile[0, 1, 2] = (200, 100, 0)
    tile[0, 7, 5] = (255, 0, 128)
    return tile


def test_bgr_nchw_scale_mean_std_by_hand():
    spec = PreprocessSpec(
        input_size=8, channel_order="BGR", layout="NCHW", scale=0.5, mean=(1, 2, 3), std=(2, 4, 5)
    )
    out = to_tensor(_tile(), spec)
    assert out.shape == (1, 3, 8, 8) and out.dtype == np.float32 and out.flags.c_contiguous
    # RGB (10, 20, 30) -> BGR (30, 20, 10) -> x0.5 (15, 10, 5) -> -mean (14, 8, 2) -> /std
    np.testing.assert_allclose(out[0, :, 0, 0], [7.0, 2.0, 0.4], rtol=1e-6)
    # RGB (200, 100, 0) -> BGR (0, 100, 200) -> (0, 50, 100) -> (-1, 48, 97) -> /std
    np.testing.assert_allclose(out[0, :, 1, 2], [-0.5, 12.0, 19.4], rtol=1e-6)
    # a black pixel: -mean / std
    np.testing.assert_allclose(out[0, :, 3, 3], [-0.5, -0.5, -0.6], rtol=1e-6)


def test_default_spec_is_raw_rgb_floats_nhwc():
    tile = _tile()
    out = to_tensor(tile, PreprocessSpec(input_size=8))
    assert out.shape == (1, 8, 8, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, tile.astype(np.float32))


def test_cntk_alexnet_convention():
    assert (CNTK_ALEXNET.channel_order, CNTK_ALEXNET.layout) == ("BGR", "NCHW")
    assert CNTK_ALEXNET.input_shape == (3, 224, 224)
    tile = np.zeros((2, 224, 224, 3), dtype=np.uint8)
    tile[1, 10, 20] = (200, 100, 50)
    out = to_tensor(tile, CNTK_ALEXNET)
    assert out.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(out[1, :, 10, 20], [50 - 114, 100 - 114, 200 - 114])
    np.testing.assert_array_equal(out[0, :, 0, 0], [-114, -114, -114])


def test_tf_resnet50_convention():
    assert (TF_RESNET50.channel_order, TF_RESNET50.layout) == ("RGB", "NHWC")
    assert TF_RESNET50.input_shape == (224, 224, 3)
    tile = np.zeros((1, 224, 224, 3), dtype=np.uint8)
    tile[0, 3, 4] = (200, 100, 50)
    out = to_tensor(tile, TF_RESNET50)
    expected = np.float32([200, 100, 50]) - np.float32([123.68, 116.78, 103.94])
    np.testing.assert_array_equal(out[0, 3, 4], expected)


def test_caffe_bgr_convention():
    tile = np.zeros((1, 224, 224, 3), dtype=np.uint8)
    tile[0, 0, 1] = (200, 100, 50)
    out = to_tensor(tile, CAFFE_BGR)
    expected = np.float32([50, 100, 200]) - np.float32([103.939, 116.779, 123.68])
    np.testing.assert_array_equal(out[0, 0, 1], expected)


def test_uint8_input_is_the_raw_pixels():
    tile = np.ascontiguousarray(_tile(224))
    out = to_tensor(tile, MOBILENET_V1_SPEC)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, tile)
    bgr = to_tensor(tile, PreprocessSpec(dtype="uint8", channel_order="BGR"))
    assert bgr.flags.c_contiguous
    np.testing.assert_array_equal(bgr, tile[..., ::-1])


def test_to_tensor_rejects_non_rgb_batches():
    with pytest.raises(ImageError, match=r"\(N, H, W, 3\)"):
        to_tensor(np.zeros((8, 8, 3), np.uint8), PreprocessSpec(input_size=8))
    with pytest.raises(ImageError, match="got shape"):
        to_tensor(np.zeros((1, 8, 8, 4), np.uint8), PreprocessSpec(input_size=8))


# --- spec validation ------------------------------------------------------------------------


def test_mean_and_std_need_one_value_per_channel():
    with pytest.raises(ValidationError, match="need 3 values"):
        PreprocessSpec(mean=(1.0, 2.0))
    with pytest.raises(ValidationError, match="need 3 values"):
        PreprocessSpec(std=(1.0, 1.0, 1.0, 1.0))


def test_std_must_be_non_zero():
    with pytest.raises(ValidationError, match="non-zero"):
        PreprocessSpec(std=(1.0, 0.0, 1.0))


def test_uint8_input_takes_raw_pixels():
    with pytest.raises(ValidationError, match="uint8 input takes raw pixels"):
        PreprocessSpec(dtype="uint8", mean=(1.0, 0.0, 0.0))
    with pytest.raises(ValidationError, match="uint8"):
        PreprocessSpec(dtype="uint8", scale=1 / 255)
    with pytest.raises(ValidationError, match="uint8"):
        PreprocessSpec(dtype="uint8", std=(2.0, 2.0, 2.0))


def test_other_spec_errors():
    with pytest.raises(ValidationError, match="red, green, blue"):
        PreprocessSpec(bands=("nir", "red", "green"))
    with pytest.raises(ValidationError):
        PreprocessSpec(layout="CHW")
    with pytest.raises(ValidationError):
        PreprocessSpec(scale=0)
    with pytest.raises(ValidationError):
        PreprocessSpec(input_size=4)
    with pytest.raises(ValidationError):
        PreprocessSpec(resize="nearest")  # extra fields are refused
    with pytest.raises(ValidationError):
        CAFFE_BGR.mean = (0.0, 0.0, 0.0)  # frozen
    rgbn = PreprocessSpec(bands=("red", "green", "blue", "nir"))
    assert rgbn.channels == 3 and rgbn.input_shape == (224, 224, 3)


def test_spec_round_trips_through_json():
    assert PreprocessSpec.model_validate_json(CNTK_ALEXNET.model_dump_json()) == CNTK_ALEXNET


# --- decode ---------------------------------------------------------------------------------


def test_decode_real_tile(fixtures_dir):
    data = (fixtures_dir / "epic_sample_tile_developed.png").read_bytes()
    tile = decode(data, CAFFE_BGR, "epic")
    assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8
    np.testing.assert_array_equal(tile, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_decode_resizes_to_the_input_size():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tile = decode(_png(pixels), PreprocessSpec(input_size=32))
    assert tile.shape == (32, 32, 3)
    expected = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(tile, np.asarray(expected))


def test_decode_non_image_bytes_names_the_image():
    with pytest.raises(ImageError, match=r"tiles/bad\.png: not a readable image"):
        decode(b"this is not a PNG", CAFFE_BGR, "tiles/bad.png")


def test_decode_truncated_png_names_the_image(fixtures_dir):
    data = (fixtures_dir / "epic_sample_tile_developed.png").read_bytes()
    with pytest.raises(ImageError, match=r"cut\.png: not a readable image"):
        decode(data[: len(data) // 2], CAFFE_BGR, "cut.png")


def test_decode_grey_image_is_refused():
    grey = _png(np.zeros((8, 8), np.uint8), "L")
    with pytest.raises(ImageError, match=r"grey\.png: 1 band\(s\), the model needs red"):
        decode(grey, PreprocessSpec(input_size=8), "grey.png")


def test_rgb_nir_png_decodes_to_its_rgb():
    rng = np.random.default_rng(1)
    bands = rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)
    bands[3, :8] = 0  # NIR 0 must not act as transparency
    bands[3, 8:] = 255
    tile = decode(encode_png(bands), PreprocessSpec(input_size=16), "rgbn.png")
    np.testing.assert_array_equal(tile, bands[:3].transpose(1, 2, 0))


def test_load_batch_names_the_failing_image():
    good = _png(np.zeros((8, 8, 3), np.uint8))
    spec = PreprocessSpec(input_size=8)
    assert load_batch([good, good], spec).shape == (2, 8, 8, 3)
    with pytest.raises(ImageError, match="image 1"):
        load_batch([good, b"junk"], spec)
    with pytest.raises(ImageError, match=r"b\.png"):
        load_batch([good, b"junk"], spec, ["a.png", "b.png"])
