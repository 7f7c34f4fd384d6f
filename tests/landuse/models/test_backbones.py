"""Backbones: SqueezeNet with the shipped ImageNet weights, ResNet-50 (random weights only:
tests never download), and the errors for unknown backbones and wrong weight files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from landuse.models.backbones import (
    SQUEEZENET_WEIGHTS,
    build_backbone,
    load_squeezenet_weights,
)
from landuse.models.preprocessing import CAFFE_BGR, decode, to_tensor


@pytest.fixture(scope="module")
def squeezenet():
    return build_backbone("squeezenet")


@pytest.fixture(scope="module")
def epic_input(fixtures_dir):
    data = (fixtures_dir / "epic_sample_tile_developed.png").read_bytes()
    return to_tensor(decode(data, CAFFE_BGR, "epic")[None], CAFFE_BGR)


def test_squeezenet_copies_the_shipped_weights(squeezenet):
    assert squeezenet.name == "squeezenet" and squeezenet.features == 512
    model = squeezenet.model
    with h5py.File(SQUEEZENET_WEIGHTS, "r") as f:
        kernel, bias = model.get_layer("conv1").get_weights()
        np.testing.assert_array_equal(kernel, f["conv1/uniform1"][()])
        np.testing.assert_array_equal(bias, f["conv1/conv1_b"][()])
        kernel, bias = model.get_layer("fire9_expand3x3").get_weights()
        group = f["fire9/expand3x3"]
        arrays = {}
        group.visit(lambda n: arrays.update({group[n].ndim: group[n][()]})
                    if isinstance(group[n], h5py.Dataset) else None)
        np.testing.assert_array_equal(kernel, arrays[4])
        np.testing.assert_array_equal(bias, arrays[1])


def test_squeezenet_input_is_caffe_bgr(squeezenet):
    assert squeezenet.preprocessing == CAFFE_BGR
    assert squeezenet.model.input_shape == (None, 224, 224, 3)
    assert squeezenet.model.output_shape == (None, 512)


def test_squeezenet_features_of_the_real_tile(squeezenet, epic_input):
    features = np.asarray(squeezenet.model(epic_input, training=False))
    assert features.shape == (1, 512)
    assert np.isfinite(features).all() and (features >= 0).all()  # ReLU, then average pooling
    assert (features > 0).mean() > 0.5  # a real photo lights up most channels
    random = build_backbone("squeezenet", weights="random")
    random_features = np.asarray(random.model(epic_input, training=False))
    assert random_features.shape == (1, 512)
    assert not np.allclose(features, random_features, rtol=0.1)
    assert not np.array_equal(random.model.get_layer("conv1").get_weights()[0],
                              squeezenet.model.get_layer("conv1").get_weights()[0])


def test_squeezenet_weights_from_a_path_and_other_input_size(epic_input):
    backbone = build_backbone("squeezenet", weights=str(SQUEEZENET_WEIGHTS), input_size=112)
    assert backbone.preprocessing.input_size == 112
    assert backbone.model.output_shape == (None, 512)
    assert backbone.model(epic_input[:, :112, :112], training=False).shape == (1, 512)


def _copy_weights(src, dst, *, drop: str | None = None, reshape: str | None = None):
    """Copy the shipped weights file, dropping a layer group or giving a dataset another shape."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        for key in fin:
            if key != drop:
                fin.copy(key, fout)
        if reshape:
            data = fout[reshape][()]
            del fout[reshape]
            fout[reshape] = np.zeros((*data.shape[:-1], data.shape[-1] + 1), data.dtype)
    return dst


def test_weights_file_missing_a_layer(tmp_path):
    path = _copy_weights(SQUEEZENET_WEIGHTS, tmp_path / "partial.h5", drop="fire7")
    with pytest.raises(ValueError, match=r"partial.h5: no weights for layer fire7_squeeze1x1"):
        build_backbone("squeezenet", weights=str(path))


def test_weights_of_the_wrong_shape(tmp_path):
    path = _copy_weights(SQUEEZENET_WEIGHTS, tmp_path / "wide.h5", reshape="conv1/uniform1")
    with pytest.raises(ValueError, match=r"wide.h5: weights of conv1 do not fit the layer"):
        build_backbone("squeezenet", weights=str(path))


def test_weights_file_that_is_not_hdf5(fixtures_dir, tmp_path):
    from landuse.models.backbones import _squeezenet_layers

    model = _squeezenet_layers(224)
    png = fixtures_dir / "epic_sample_tile_developed.png"
    with pytest.raises(ValueError, match=r"epic_sample_tile_developed\.png: not a readable HDF5"):
        load_squeezenet_weights(model, png)
    with pytest.raises(ValueError, match=r"absent\.h5: not a readable HDF5"):
        build_backbone("squeezenet", weights=str(tmp_path / "absent.h5"))


def test_resnet50_random_weights_2048_features():
    backbone = build_backbone("resnet50", weights="random", input_size=64)
    assert backbone.name == "resnet50" and backbone.features == 2048
    assert backbone.preprocessing == CAFFE_BGR.model_copy(update={"input_size": 64})
    assert backbone.model.output_shape == (None, 2048)
    tiles = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    features = np.asarray(backbone.model(to_tensor(tiles, backbone.preprocessing)))
    assert features.shape == (1, 2048) and np.isfinite(features).all()
    assert (features >= 0).all()  # pooled after a ReLU


def test_resnet50_weights_that_are_neither_a_file_nor_known(tmp_path):
    with pytest.raises(ValueError, match=r"ResNet-50 weights .*absent.h5.*imagenet, a file"):
        build_backbone("resnet50", weights=str(tmp_path / "absent.h5"))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'; use squeezenet or resnet50"):
        build_backbone("vgg16")


def test_resnet50_loads_a_local_weights_file(tmp_path):
    """Offline, ResNet-50 takes its ImageNet weights from a local 'notop' file."""
    source = build_backbone("resnet50", "random", input_size=64).model
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(str(path))
    loaded = build_backbone("resnet50", str(path), input_size=64).model
    for a, b in zip(source.weights[:3] + source.weights[-3:],
                    loaded.weights[:3] + loaded.weights[-3:], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
