"""Change without labels: feature distance per tile, robust z-scores, agreement figures, and
real backbone features."""

from __future__ import annotations

import numpy as np
import pytest

from landuse.change import embedding
from landuse.models.preprocessing import ImageError


@pytest.fixture
def features():
    rng = np.random.default_rng(3)
    return rng.normal(size=(40, 64)).astype(np.float32)


def test_identical_features_do_not_change(features):
    distance = embedding.change_distance(features, features.copy())
    assert distance.shape == (40,)
    np.testing.assert_allclose(distance, 0.0, atol=1e-5)


def test_a_changed_tile_stands_out(features):
    rng = np.random.default_rng(4)
    later = features + rng.normal(scale=0.1, size=features.shape).astype(np.float32)
    later[7] = rng.normal(size=64)  # a different place
    distance = embedding.change_distance(features, later)
    assert distance.argmax() == 7
    assert distance[7] > 0.5
    assert np.delete(distance, 7).max() < 0.1
    assert ((distance >= 0) & (distance <= 2)).all()
    z = embedding.robust_z(distance)
    assert z[7] > 10 * embedding.HOTSPOT_Z
    assert (np.delete(z, 7) < 5).all()


def test_a_shift_of_the_whole_vintage_is_not_change(features):
    rng = np.random.default_rng(5)
    later = features + rng.normal(scale=0.1, size=features.shape).astype(np.float32)
    later[7] = rng.normal(size=64)
    base = embedding.change_distance(features, later)
    # another sun, season or sensor: every feature scaled and offset (its own way) in B
    scale = rng.uniform(0.5, 3.0, size=64).astype(np.float32)
    offset = rng.normal(scale=10.0, size=64).astype(np.float32)
    shifted = embedding.change_distance(features * 2.0 - 4.0, later * scale + offset)
    np.testing.assert_allclose(shifted, base, atol=1e-3)
    assert shifted.argmax() == 7
    # without standardisation the same shift would swamp the change
    raw = 1 - ((features * (later * scale + offset)).sum(1)
               / np.linalg.norm(features, axis=1)
               / np.linalg.norm(later * scale + offset, axis=1))
    assert not np.allclose(raw, base, atol=0.1)


def test_standardise():
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    s = embedding.standardise(x)
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s[:, 0], [-1.2247, 0.0, 1.2247], atol=1e-3)
    assert np.isfinite(s).all() and (s[:, 1] == 0).all()  # a constant feature is not NaN


def test_shapes_must_match(features):
    with pytest.raises(ValueError, match=r"differ in shape: \(40, 64\) and \(39, 64\)"):
        embedding.change_distance(features, features[:39])


def test_robust_z():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    z = embedding.robust_z(values)
    # median 3, MAD 1: an outlier does not inflate the scale
    np.testing.assert_allclose(z, (values - 3.0) / 1.4826)
    assert embedding.robust_z(np.full(4, 2.5)).tolist() == [0.0] * 4
    assert (embedding.robust_z(np.array([1.0, 1.0, 1.0, 5.0])) > 1e6)[3]


def test_agreement():
    detected = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    reference = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert embedding.agreement(detected, reference) == {
        "detected": 4, "reference": 3, "both": 2, "tiles": 10,
        "precision": 0.5, "recall": round(2 / 3, 4), "iou": 0.4, "base_rate": 0.3,
    }
    none = embedding.agreement(np.zeros(4, bool), np.zeros(4, bool))
    assert (none["precision"], none["recall"], none["iou"]) == (0.0, 0.0, 0.0)
    ints = embedding.agreement(np.array([0, 2]), np.array([0, 1]))  # any non-zero is true
    assert (ints["precision"], ints["recall"]) == (1.0, 1.0)


def test_embed_real_tiles(change_root, tmp_path):
    urls = list(change_root.manifests[2016]["image_url"].iloc[:6])
    features = embedding.embed(urls, batch_size=4)  # two batches
    assert features.shape == (6, 512)
    assert np.isfinite(features).all() and features.std() > 0
    # order is kept: the same tiles in another order give the same rows, reordered
    again = embedding.embed(urls[::-1], batch_size=32)
    np.testing.assert_allclose(again[::-1], features, rtol=1e-4, atol=1e-4)
    assert embedding.embed([], batch_size=4).shape == (0, 512)
    with pytest.raises(ImageError, match=r"missing\.png"):
        embedding.embed([urls[0], str(tmp_path / "missing.png")])
