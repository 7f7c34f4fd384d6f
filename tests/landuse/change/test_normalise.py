"""Relative radiometric normalisation (IR-MAD) on a real NAIP scene against a copy of itself
with each band's gain, offset and gamma changed and a water body planted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window

from landuse.change import features, normalise
from landuse.change.water import otsu_threshold, water_mask
from landuse.raster import RasterError

GAIN, OFFSET, GAMMA = (1.15, 0.9, 1.1, 0.85), (-8.0, 12.0, 5.0, 10.0), (0.9, 1.1, 0.95, 1.05)
SIDE = 600
# A pond planted where the real 2016 scene has no water (checked below), radius 70 px.
POND_CENTRE, POND_RADIUS = (300, 100), 70
# The unchanged area after normalisation: mean absolute difference per band, in 8-bit DN.
TOLERANCE_DN = 1.5


@pytest.fixture(scope="module")
def pair(tmp_path_factory, real_scene):
    """Year A: a 600 x 600 px window of the real scene; year B: its distorted copy with a
    pond. Returns (url_a, url_b, pixels_a, pixels_b, pond, far_from_pond)."""
    folder = tmp_path_factory.mktemp("normalise")
    with rasterio.open(real_scene) as src:
        window = Window(150, 60, SIDE, SIDE)
        a = src.read(window=window)
        profile = {**src.profile, "width": SIDE, "height": SIDE,
                   "transform": src.window_transform(window)}
    b = np.stack([np.clip(255 * (a[k] / 255.0) ** GAMMA[k] * GAIN[k] + OFFSET[k], 1, 255)
                  for k in range(4)])
    yy, xx = np.mgrid[:SIDE, :SIDE]
    r2 = (yy - POND_CENTRE[0]) ** 2 + (xx - POND_CENTRE[1]) ** 2
    pond = r2 < POND_RADIUS ** 2
    for k, value in enumerate((40, 55, 50, 12)):  # open water: dark NIR, green above NIR
        b[k][pond] = value
    b = b.round().astype(np.uint8)
    urls = []
    for name, pixels in (("a.tif", a), ("b.tif", b)):
        with rasterio.open(folder / name, "w", **profile) as out:
            out.write(pixels)
        urls.append(str(folder / name))
    return urls[0], urls[1], a, b, pond, r2 >= (POND_RADIUS + 10) ** 2


def _error(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> np.ndarray:
    return np.array([np.abs(a[k].astype(float) - b[k])[where].mean() for k in range(len(a))])


def test_irmad_undoes_the_distortion_and_keeps_the_planted_pond(pair):
    url_a, url_b, a, b, pond, far = pair
    norm = normalise.normalise_pair(url_a, url_b)
    assert norm.method == "irmad" and norm.no_change_pixels > 1000
    normalised = norm.apply(b.reshape(4, -1)).reshape(b.shape)
    before, after = _error(a, b, far), _error(a, normalised, far)
    print(f"\nunchanged area, mean |A - B| per band: before {before.round(2)}, after IR-MAD "
          f"{after.round(2)} DN")
    assert (before > 5).all()
    assert (after < TOLERANCE_DN).all()
    # the inverse of the planted gain, roughly (gamma bends each band a little)
    np.testing.assert_allclose([m.gain for m in norm.bands], 1 / np.array(GAIN), rtol=0.1)
    # the pond is still there, and only there: water by the scene's own NIR threshold
    threshold = otsu_threshold(a[3][a[3] > 0])
    assert water_mask(a[1], a[3], threshold)[pond].mean() < 0.02
    assert water_mask(normalised[1], normalised[3], threshold)[pond].mean() > 0.95


def test_histogram_matching_is_the_weaker_fallback(pair):
    """Matching whole histograms also bends the unchanged area to absorb the pond."""
    url_a, url_b, a, b, _, far = pair
    x, y = a.reshape(4, -1).T, b.reshape(4, -1).T
    matched = normalise.match_histograms(y, x).T.reshape(b.shape)
    irmad = normalise.fit_irmad(*normalise.sample_pair(url_a, url_b))
    normalised = irmad.apply(b.reshape(4, -1)).reshape(b.shape)
    assert _error(a, normalised, far).max() < _error(a, matched, far).max()


def test_no_change_probability_is_low_on_the_pond(pair):
    url_a, url_b, *_ = pair
    x, y = normalise.sample_pair(url_a, url_b, side=SIDE)
    weights, rho, iterations = normalise.irmad_weights(x, y)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    pond = ((yy - POND_CENTRE[0]) ** 2 + (xx - POND_CENTRE[1]) ** 2 < (POND_RADIUS - 5) ** 2)
    assert weights.shape == (SIDE * SIDE,) and 1 <= iterations <= 50
    # every pond pixel is less likely unchanged than most of the rest (the gamma change
    # leaves the rest's MAD variates wider than a normal's, so their weights are modest)
    assert weights[pond.ravel()].max() < 1e-6 < np.median(weights[~pond.ravel()]) / 1000
    assert (np.diff(rho) <= 1e-9).all()  # highest first


def test_tile_statistics_follow_the_normalisation(pair):
    url_a, url_b, *_ = pair
    with rasterio.open(url_a) as src:
        left, bottom, right, top = src.bounds
    tiles = pd.DataFrame({"tile_id": ["a-pond", "b-right"],
                          "minx": [left, left + 1000.0], "miny": [bottom, bottom],
                          "maxx": [left + 1000.0, right], "maxy": [top, top]})
    model, spec = features.backbone_model()
    raw_a, raw_b = (features.scene_features(tiles.assign(scene_url=url), model, spec, 64)
                    .sort_values("tile_id")[list(normalise.RAW_STATISTICS)].to_numpy(float)
                    for url in (url_a, url_b))
    assert raw_a.shape == (2, len(normalise.RAW_STATISTICS))
    norm = normalise.normalise_pair(url_a, url_b)
    stats_a = normalise.normalised_statistics(raw_a)
    stats_b = normalise.normalised_statistics(raw_b)
    normalised = normalise.normalised_statistics(raw_b, norm)
    assert stats_a.shape == (2, len(normalise.STATISTICS))
    # the tile right of the pond: band means back within a few DN of year A's
    assert np.abs(normalised[1, :4] - stats_a[1, :4]).max() < 2.0
    assert np.abs(stats_b[1, :4] - stats_a[1, :4]).max() > 5.0
    # the pond's tile: NDWI up, NIR down
    assert normalised[0, 9] > stats_a[0, 9] + 0.02 and normalised[0, 3] < stats_a[0, 3] - 5


def test_bad_input_is_named(tmp_path, pair):
    url_a, *_ = pair
    with pytest.raises(ValueError, match=r"one shape; got \(10, 4\) and \(10, 3\)"):
        normalise.irmad_weights(np.ones((10, 4)), np.ones((10, 3)))
    with pytest.raises(ValueError, match="more pixels than 5 for 4 bands"):
        normalise.irmad_weights(np.ones((5, 4)), np.ones((5, 4)))
    with pytest.raises(ValueError, match="fitted on 4"):
        normalise.Normalisation(tuple(normalise.BandMap(1, 0) for _ in range(4))).apply(
            np.ones((3, 2)))
    with rasterio.open(url_a) as src:
        profile = {**src.profile, "count": 3}
        pixels = src.read([1, 2, 3])
    three = tmp_path / "rgb.tif"
    with rasterio.open(three, "w", **profile) as out:
        out.write(pixels)
    with pytest.raises(RasterError, match="have 4 and 3 bands"):
        normalise.normalise_pair(url_a, str(three))
    far = tmp_path / "far.tif"
    with rasterio.open(far, "w", **{**profile, "count": 4, "transform": rasterio.Affine(
            5, 0, 0, 0, -5, 1000)}) as out:
        out.write(np.ones((4, SIDE, SIDE), np.uint8))
    with pytest.raises(RasterError, match="do not overlap"):
        normalise.normalise_pair(url_a, str(far))


def test_pairs_fitted_on_spark_are_the_same(pair):
    from landuse.spark import local_spark

    url_a, url_b, *_ = pair
    pairs = [(url_a, url_b), (url_b, url_a), (url_a, url_b)]  # a repeat is fitted once
    here = normalise.normalise_pairs(pairs)
    there = normalise.normalise_pairs(pairs, local_spark("landuse-tests"))
    assert set(here) == set(there) == {(url_a, url_b), (url_b, url_a)}
    for key, fit in here.items():
        assert there[key].as_dict() == fit.as_dict()
    # B onto A and A onto B are inverse maps
    forward, back = here[url_a, url_b].bands[0], here[url_b, url_a].bands[0]
    assert forward.gain * back.gain == pytest.approx(1.0, rel=0.05)
