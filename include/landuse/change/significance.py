"""A per-tile test of change against a null that means "no change", with the false-discovery
rate controlled over the county.

Year B's tile features are modelled from year A's over the whole county: a cross-year map
(linear in each principal component, plus its square), fitted
by iteratively reweighted least squares on the tiles most likely unchanged (each tile weighted
by its no-change probability from the previous fit, as IR-MAD weights pixels). What the map
explains is what differs between the acquisitions as a whole (sun, season, sensor,
processing, crops a few weeks further on); what is left, the residual, is scored by its
Mahalanobis distance under the residual covariance of the unchanged tiles. Under no change the
squared distance is chi-squared with as many degrees of freedom as components; where the fit
shows it is not (residuals wider than that), the null is the empirical one of the reweighted
fit (Efron's central matching on the Wilson-Hilferty normal scores), never narrower than the
chi-squared: a residual smaller than :data:`MIN_CHANGE` of the county's spread is no change. Strata
whose spread clearly differs (cropland varies more between years than water or built-up land)
get their own null. Each tile's p-value is then selected by Benjamini-Hochberg at the
requested false-discovery rate: among the tiles flagged, about ``fdr`` × flagged are expected
to be false, whatever share of the county changed, and a county where nothing changed gets
few or none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The false-discovery rate asked for by default.
FDR = 0.05
# Fewer tiles than this and the cross-year map cannot be fitted.
MIN_TILES = 10
# Principal components of the stacked features that the cross-year map models (at most;
# fewer on small counties, so that every component has tiles to be fitted on).
COMPONENTS = 6
TILES_PER_COMPONENT = 10
# A stratum gets its own null when it has this many tiles and its null's scale differs from
# the pooled one by more than this factor.
MIN_STRATUM = 40
STRATUM_SCALE = 1.5
ITERATIONS = 20
# A residual this small (in units of the county's between-tile spread of each component) is
# no change, however tight the fit: without this floor a near-perfect fit (a scene against a
# radiometrically distorted copy of itself) would make its smallest misfits significant.
MIN_CHANGE = 0.1


@dataclass(frozen=True)
class Null:
    """The null of one stratum on the normal-score scale: ``z ~ N(centre, scale²)``."""

    name: str
    tiles: int
    centre: float
    scale: float
    kind: str  # "chi2" (theoretical) or "empirical"


@dataclass(frozen=True)
class ChangeTest:
    """Tiles whose change passes the test, and the evidence.

    Attributes:
        p_values: one per tile: the probability, under no change, of a residual this far.
        distances: squared Mahalanobis distance of each tile's residual.
        flagged: tiles selected by Benjamini-Hochberg at ``fdr``.
        fdr: the false-discovery rate asked for.
        components: degrees of freedom (features modelled).
        nulls: the null of each stratum (one, ``all``, when not stratified).
        strata: each tile's stratum name.
        weights: each tile's final no-change weight in the fit.
    """

    p_values: np.ndarray
    distances: np.ndarray
    flagged: np.ndarray
    fdr: float
    components: int
    nulls: tuple[Null, ...]
    strata: np.ndarray
    weights: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        """Each tile's residual as a normal score (Wilson-Hilferty): N(0, 1) under the
        chi-squared null, N(centre, scale²) under an empirical one."""
        return wilson_hilferty(self.distances, self.components)

    @property
    def share(self) -> float:
        """Share of the tiles flagged."""
        return float(self.flagged.mean()) if self.flagged.size else 0.0

    @property
    def expected_false(self) -> float:
        """Flagged tiles expected to be false discoveries: ``fdr`` × flagged."""
        return self.fdr * int(self.flagged.sum())

    @property
    def method(self) -> str:
        """The test in words, for a report."""
        nulls = "; ".join(f"{n.name} ({n.tiles} tiles): {n.kind}"
                          + ("" if n.kind == "chi2" else
                             f", normal scores centre {n.centre:+.2f} scale {n.scale:.2f}")
                          for n in self.nulls)
        return (f"year-B features modelled from year A by a cross-year map (each component "
                f"and its square) fitted on "
                f"likely-unchanged tiles; residual Mahalanobis distance on {self.components} "
                f"components; p-values from the no-change null ({nulls}); tiles selected by "
                f"Benjamini-Hochberg at FDR {self.fdr:g}")

    def as_dict(self) -> dict[str, object]:
        """Headline figures for a summary."""
        return {"fdr": self.fdr, "flagged": int(self.flagged.sum()),
                "share_flagged": round(self.share, 4),
                "expected_false": round(self.expected_false, 1),
                "components": self.components,
                "nulls": [{"stratum": n.name, "tiles": n.tiles, "kind": n.kind,
                           "centre": round(n.centre, 3), "scale": round(n.scale, 3)}
                          for n in self.nulls]}


def components(features_a: np.ndarray, features_b: np.ndarray,
               count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both years' features on the leading principal components of the two stacked.

    Features are first standardised over both years together (a shared scale: the cross-year
    map, not the standardisation, absorbs what differs between the years).
    """
    fa, fb = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if fa.shape != fb.shape or fa.ndim != 2:
        raise ValueError(f"feature arrays differ in shape: {fa.shape} and {fb.shape}; "
                         "embed the same tiles in both years")
    n = len(fa)
    k = count or max(1, min(COMPONENTS, n // TILES_PER_COMPONENT, fa.shape[1]))
    stacked = np.concatenate([fa, fb])
    stacked = (stacked - stacked.mean(axis=0)) / (stacked.std(axis=0) + 1e-9)
    _, _, vt = np.linalg.svd(stacked, full_matrices=False)
    z = stacked @ vt[:k].T
    return z[:n], z[n:]


def wilson_hilferty(d2: np.ndarray, k: int) -> np.ndarray:
    """Normal scores of chi-squared(k) values: N(0, 1) when ``d2`` is chi-squared(k)."""
    c = 2.0 / (9.0 * k)
    return np.asarray((np.cbrt(np.maximum(d2, 0.0) / k) - (1.0 - c)) / np.sqrt(c))


def central_null(z: np.ndarray, name: str) -> Null:
    """The empirical null of normal scores, from their centre and lower half (change only
    adds to the upper tail, so the lower half is the least contaminated)."""
    centre = float(np.median(z))
    scale = float((centre - np.quantile(z, 0.25)) / 0.6744897501960817)
    scale = max(scale, 1e-6)
    if centre <= 0.0 and scale <= 1.0:
        return Null(name, len(z), 0.0, 1.0, "chi2")
    # never narrower than chi-squared: a tight fit must not make its smallest misfits change
    return Null(name, len(z), max(centre, 0.0), max(scale, 1.0), "empirical")


def _p_values(z: np.ndarray, null: Null) -> np.ndarray:
    from scipy.stats import norm

    return np.asarray(norm.sf((z - null.centre) / null.scale))


def significant_change(features_a: np.ndarray, features_b: np.ndarray, *, fdr: float = FDR,
                strata: np.ndarray | None = None, count: int | None = None) -> ChangeTest:
    """Test every tile for change between two years' features (rows: the same tiles).

    Args:
        features_a: year A, ``(tiles, features)``.
        features_b: year B, the same tiles and features.
        fdr: false-discovery rate for Benjamini-Hochberg (0-1).
        strata: one label per tile (from year A: land-use calls, or NDVI classes); a
            stratum with at least :data:`MIN_STRATUM` tiles whose null differs clearly
            from the pooled one gets its own.
        count: principal components modelled (default: :data:`COMPONENTS`, fewer on
            small counties).

    Raises:
        ValueError: shapes differ, fewer than 10 tiles, NaN features, or ``fdr`` outside 0-1.
    """
    from scipy.stats import false_discovery_control

    if not 0 < fdr < 1:
        raise ValueError(f"fdr must be between 0 and 1, got {fdr}")
    if not (np.isfinite(features_a).all() and np.isfinite(features_b).all()):
        raise ValueError("features must be finite (no NaN or infinity)")
    za, zb = components(features_a, features_b, count)
    n, k = za.shape
    if n < MIN_TILES:
        raise ValueError(f"the test needs at least {MIN_TILES} tiles with imagery in both "
                         f"years; got {n}")
    labels = (np.asarray(strata).astype(str) if strata is not None
              else np.full(n, "all", dtype=object))
    if len(labels) != n:
        raise ValueError(f"strata has {len(labels)} entries for {n} tiles")
    # linear in each component plus its square: radiometry differs by more than a gain and
    # an offset (gamma, haze), and a tile's statistics follow it smoothly
    design = np.column_stack([np.ones(n), za, za ** 2])
    weights = np.ones(n)
    for _ in range(ITERATIONS):
        sw = np.sqrt(weights)[:, None]
        beta, *_ = np.linalg.lstsq(design * sw, zb * sw, rcond=None)
        residual = zb - design @ beta
        w = weights / weights.sum()
        cov = (residual * w[:, None]).T @ residual + MIN_CHANGE ** 2 * np.eye(k)
        d2 = np.einsum("ij,ij->i", residual @ np.linalg.inv(cov), residual)
        z = wilson_hilferty(d2, k)
        nulls, p = _stratified_nulls(z, labels)
        new = np.clip(p, 1e-12, 1.0)
        if np.abs(new - weights).max() < 1e-4:
            break
        weights = new
    adjusted = false_discovery_control(p, method="bh")
    return ChangeTest(p, d2, adjusted <= fdr, fdr, k, nulls, labels, weights)


def _stratified_nulls(z: np.ndarray, labels: np.ndarray) -> tuple[tuple[Null, ...], np.ndarray]:
    """P-values under the pooled null, or a stratum's own where it clearly differs."""
    pooled = central_null(z, "all")
    p = _p_values(z, pooled)
    nulls = [pooled]
    for name in sorted(set(labels.tolist())):
        inside = labels == name
        if inside.sum() < MIN_STRATUM or inside.all():
            continue
        own = central_null(z[inside], str(name))
        ratio = own.scale / pooled.scale
        shift = abs(own.centre - pooled.centre) / pooled.scale
        if ratio > STRATUM_SCALE or ratio < 1 / STRATUM_SCALE or shift > 1.0:
            p[inside] = _p_values(z[inside], own)
            nulls.append(own)
    return tuple(nulls), p
