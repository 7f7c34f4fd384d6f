"""Change without labels: feature distance per tile, robust z-scores, agreement figures and
the hotspot rule."""

from __future__ import annotations

import numpy as np
import pytest

from landuse.change import embedding


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
    np.testing.assert_allclose(z, (values - 3.0) / 1.4826, rtol=1e-4)
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


# --- hotspots against the county's own null model -------------------------------------

SIDE, SIZE = 12, 224.0


def _cell(row: int, col: int) -> int:
    return row * SIDE + col


@pytest.fixture
def county():
    """A 12 × 12 tile county of 3 × 3-tile patches of six kinds of place (features: the kind's
    prototype plus per-tile variation), its tile bounds on a UTM-like grid, and its rng."""
    rng = np.random.default_rng(11)
    prototypes = np.abs(rng.normal(size=(6, 64)))
    kinds = np.kron(rng.integers(0, 6, size=(4, 4)), np.ones((3, 3), dtype=int)).ravel()
    features = np.abs(prototypes[kinds] + rng.normal(scale=0.3, size=(SIDE * SIDE, 64)))
    rows, cols = np.divmod(np.arange(SIDE * SIDE), SIDE)
    bounds = np.stack([cols * SIZE, rows * SIZE, (cols + 1) * SIZE, (rows + 1) * SIZE], axis=1)
    return {"features": features, "kinds": kinds, "prototypes": prototypes,
            "bounds": bounds + np.array([500_000.0, 5_200_000.0] * 2), "rng": rng}


def _another_acquisition(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same places seen again: every feature scaled and offset its own way, a little noise."""
    return (features * rng.uniform(0.5, 2.0, size=features.shape[1])
            + rng.uniform(0.0, 3.0, size=features.shape[1])
            + rng.normal(scale=0.05, size=features.shape))


def test_nothing_changed_gives_no_hotspots(county):
    later = _another_acquisition(county["features"], county["rng"])
    distances, hot = embedding.change_hotspots(county["features"], later, county["bounds"])
    assert not hot.mask.any() and hot.share == 0.0
    assert distances.max() < hot.threshold < hot.lone_threshold
    # the old rule flags a fixed share of the same quiet county
    assert (embedding.robust_z(distances) > embedding.HOTSPOT_Z).mean() > 0.1


def test_planted_changes_are_hotspots(county):
    rng, kinds, prototypes = county["rng"], county["kinds"], county["prototypes"]
    later = county["features"].copy()
    block = [_cell(r, c) for r in range(4, 7) for c in range(4, 7)]  # a new kind of place
    new_kind = np.abs(rng.normal(size=64)) * 2
    later[block] = np.abs(new_kind + rng.normal(scale=0.3, size=(len(block), 64)))
    lone = _cell(10, 1)  # one tile becomes another kind of place, among unchanged tiles
    later[lone] = np.abs(prototypes[(kinds[lone] + 3) % 6] + rng.normal(scale=0.3, size=64))
    later = _another_acquisition(later, rng)

    distances, hot = embedding.change_hotspots(county["features"], later, county["bounds"])
    planted = np.zeros(SIDE * SIDE, dtype=bool)
    planted[[*block, lone]] = True
    assert hot.mask[planted].all()
    assert (hot.mask & ~planted).sum() <= 2
    # the lone tile is caught by its own distance, its neighbours are not dragged in
    assert hot.neighbourhood[lone] < hot.threshold < distances[lone]
    assert f"{hot.threshold:.3f}" in hot.method and f"{hot.lone_threshold:.3f}" in hot.method


def test_adjacent_pairs():
    # 3 × 2 tiles of 10 m, and one tile on the same ground in another CRS
    bounds = np.array([[x, y, x + 10, y + 10] for y in (100, 110) for x in (0, 10, 20)]
                      + [[0, 100, 10, 110]], dtype=float)
    groups = ["EPSG:32614"] * 6 + ["EPSG:32613"]
    pairs = embedding.adjacent_pairs(bounds, groups)
    assert pairs.tolist() == [[0, 1], [0, 3], [1, 2], [1, 4], [2, 5], [3, 4], [4, 5]]
    assert embedding.adjacent_pairs(bounds[[0, 2]]).shape == (0, 2)  # not adjacent
    with pytest.raises(ValueError, match="same grid cell"):
        embedding.adjacent_pairs(bounds)  # without groups, tiles 0 and 6 collide
    with pytest.raises(ValueError, match=r"must be \(n, 4\)"):
        embedding.adjacent_pairs(bounds[:, :3])
    with pytest.raises(ValueError, match="maxx > minx"):
        embedding.adjacent_pairs(np.array([[0.0, 0.0, 0.0, 10.0]]))
    with pytest.raises(ValueError, match="groups has 2 entries for 7 tiles"):
        embedding.adjacent_pairs(bounds, groups[:2])


def test_neighbourhood_mean_and_null():
    pairs = np.array([[0, 1], [1, 2]])  # a row of three tiles, and a fourth alone
    np.testing.assert_allclose(embedding.neighbourhood_mean(np.array([3.0, 0.0, 6.0, 5.0]),
                                                            pairs), [1.5, 3.0, 3.0, 5.0])
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    null = embedding.neighbour_distances(a, b, pairs)
    assert null.shape == (4,)  # two pairs in each vintage
    sa = embedding.standardise(a)
    expected = 1 - sa[0] @ sa[1] / np.linalg.norm(sa[0]) / np.linalg.norm(sa[1])
    assert null[0] == pytest.approx(expected)


def test_select_hotspots_refuses_bad_input():
    pairs = np.array([[0, 1]])
    with pytest.raises(ValueError, match="no two tiles share an edge"):
        embedding.select_hotspots(np.array([0.1, 0.2]), np.array([]), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="NaN"):
        embedding.select_hotspots(np.array([0.1, np.nan]), np.array([0.5, 0.6]), pairs)
    with pytest.raises(ValueError, match=r"between 0 and 1, got 1\.5"):
        embedding.select_hotspots(np.array([0.1, 0.2]), np.array([0.5]), pairs, quantile=1.5)
