"""The per-tile no-change test: a cross-year map fitted on likely-unchanged tiles,
Mahalanobis residuals, the no-change null and Benjamini-Hochberg."""

from __future__ import annotations

import numpy as np
import pytest

from landuse.change import significance


def county(seed: int, tiles: int = 500, features: int = 10, noise: float = 0.3):
    """Year A's features and year B's: every feature re-mixed, scaled and offset (another
    acquisition), plus independent noise; nothing changed."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(tiles, features)) @ rng.normal(size=(features, features))
    mix = np.eye(features) + 0.2 * rng.normal(size=(features, features))
    b = a @ mix * 1.7 + 5.0 + noise * rng.normal(size=a.shape) * a.std(axis=0)
    return rng, a, b


@pytest.mark.parametrize("seed", range(5))
def test_a_county_where_nothing_changed_stays_quiet(seed):
    _, a, b = county(seed)
    result = significance.significant_change(a, b, fdr=0.05)
    assert result.share <= 2 * 0.05
    assert result.flagged.sum() <= 3
    assert result.p_values.shape == (500,) and ((result.p_values >= 0)
                                                & (result.p_values <= 1)).all()


def test_changed_tiles_are_found_and_the_false_ones_are_few():
    rng, a, b = county(11)
    changed = rng.choice(500, size=25, replace=False)
    b[changed] = b[rng.permutation(changed)] + 3 * b.std(axis=0)  # another place, brighter
    result = significance.significant_change(a, b, fdr=0.05)
    truth = np.zeros(500, bool)
    truth[changed] = True
    assert (result.flagged & truth).sum() >= 0.8 * truth.sum()
    false = int((result.flagged & ~truth).sum())
    assert false <= max(3, 3 * result.expected_false)
    assert result.expected_false == pytest.approx(0.05 * result.flagged.sum())
    assert result.p_values[changed].max() < np.median(result.p_values)
    assert (result.weights[changed] < 0.01).mean() > 0.8  # left out of the fit
    assert "Benjamini-Hochberg at FDR 0.05" in result.method


def test_a_noisier_stratum_gets_its_own_null():
    """Cropland varies more between years than water or built-up land: pooled, its tiles
    flood the flags; with its own null they do not."""
    rng, a, b = county(5, tiles=600)
    crop = np.arange(600) < 300
    b[crop] += 1.5 * rng.normal(size=(300, a.shape[1])) * a.std(axis=0)
    strata = np.where(crop, "cropland", "other")
    pooled = significance.significant_change(a, b, fdr=0.05)
    stratified = significance.significant_change(a, b, fdr=0.05, strata=strata)
    assert len(stratified.nulls) >= 2 and stratified.nulls[0].name == "all"
    assert stratified.flagged.sum() <= pooled.flagged.sum()
    assert stratified.share <= 0.1
    summary = stratified.as_dict()
    assert summary["flagged"] == int(stratified.flagged.sum())
    assert summary["nulls"][0]["stratum"] == "all"


def test_the_null_is_never_narrower_than_chi_squared():
    """A near-perfect fit (a scene against a distorted copy of itself) flags nothing: the
    smallest misfits are not change."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 10))
    b = np.tanh(0.3 * a) * 2 + 1e-4 * rng.normal(size=a.shape)  # smooth, nonlinear, exact
    result = significance.significant_change(a, b)
    assert result.flagged.sum() == 0
    assert all(n.scale >= 1.0 and n.centre >= 0.0 for n in result.nulls)


def test_bad_input_is_named():
    a = np.zeros((20, 4))
    with pytest.raises(ValueError, match=r"fdr must be between 0 and 1, got 1\.5"):
        significance.significant_change(a, a, fdr=1.5)
    with pytest.raises(ValueError, match=r"differ in shape: \(20, 4\) and \(19, 4\)"):
        significance.significant_change(a, a[:19])
    with pytest.raises(ValueError, match="at least 10 tiles"):
        significance.significant_change(a[:5], a[:5] + 1)
    nan = np.random.default_rng(0).normal(size=(20, 4))
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        significance.significant_change(nan, nan)
    rng = np.random.default_rng(0)
    good = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match="strata has 3 entries for 20 tiles"):
        significance.significant_change(good, good, strata=np.array(["a", "b", "c"]))
