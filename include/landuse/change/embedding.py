"""Change without labels: how far each tile moved in a backbone's feature space.

Each tile of both years goes through an ImageNet backbone (SqueezeNet v1.1, whose weights
ship with the project; computed once per county-year by :mod:`landuse.change.features`);
features are standardised per vintage (every feature to zero mean
and unit variance over the county's tiles of that year), which removes most of what differs
between two acquisitions as a whole (sun, season, sensor), and the change of a tile is the
cosine distance between its two standardised feature vectors.

Hotspots (:func:`select_hotspots`) are chosen against a null model taken from the county
itself: how different *neighbouring places* look within one acquisition (the distance between
edge-adjacent tiles of the same year). A tile is a hotspot when its neighbourhood (the tile
and its edge neighbours) moved, on average, farther than a low quantile of that null, or
when the tile alone moved farther than a high quantile of it. A county where nothing changed
has distances far below the null and gets few or no hotspots; the old rule, a robust z-score
above :data:`HOTSPOT_Z`, flags about one tile in six whatever happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The old rule (kept for comparison): robust z-score above which a tile is a hotspot.
HOTSPOT_Z = 1.0
# Quantiles of the neighbouring-places null (see select_hotspots), tuned on the real
# Stutsman County pairs 2010 -> 2016 (much water change) and 2016 -> 2020 (little):
# a neighbourhood is a hotspot above the NEIGHBOURHOOD_QUANTILE, a lone tile above the
# LONE_QUANTILE (a new pond or building in a quiet neighbourhood).
NEIGHBOURHOOD_QUANTILE = 0.4
LONE_QUANTILE = 0.75


def standardise(features: np.ndarray) -> np.ndarray:
    """Every feature to zero mean and unit variance over the tiles of one vintage."""
    return (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)


def change_distance(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """Cosine distance (0-2) between each tile's standardised features in two vintages."""
    if features_a.shape != features_b.shape:
        raise ValueError(f"feature arrays differ in shape: {features_a.shape} and "
                         f"{features_b.shape}; embed the same tiles in both years")
    return _cosine_distance(standardise(features_a), standardise(features_b))


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return np.asarray(1.0 - cos)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (MAD scaled to a normal's sigma): a z-score that a few big changes
    do not inflate."""
    from scipy.stats import median_abs_deviation

    mad = float(median_abs_deviation(values, scale="normal"))
    return np.asarray((values - np.median(values)) / (mad if mad > 0 else 1e-12))


def adjacent_pairs(bounds: np.ndarray, groups: Sequence[object] | None = None) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of tiles that share an edge, shape ``(k, 2)``.

    Args:
        bounds: ``(n, 4)`` tile bounds (minx, miny, maxx, maxy) on a regular tile grid.
        groups: one key per tile (the CRS, say); only tiles of the same group are adjacent.

    Raises:
        ValueError: bounds of the wrong shape, empty or negative tiles, two tiles on one
            grid cell, or a group per tile missing.
    """
    bounds = np.asarray(bounds, dtype=float)
    if bounds.ndim != 2 or bounds.shape[1] != 4:
        raise ValueError(f"bounds must be (n, 4) minx, miny, maxx, maxy; got {bounds.shape}")
    width, height = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
    if not ((width > 0) & (height > 0)).all():
        raise ValueError("bounds: every tile needs maxx > minx and maxy > miny")
    keys = list(groups) if groups is not None else [None] * len(bounds)
    if len(keys) != len(bounds):
        raise ValueError(f"groups has {len(keys)} entries for {len(bounds)} tiles")
    # grid cells in units of each tile's own size (tiles of one grid all have one size)
    cols = np.rint(bounds[:, 0] / width).astype(np.int64)
    rows = np.rint(bounds[:, 1] / height).astype(np.int64)
    cell = {(g, int(c), int(r)): i
            for i, (g, c, r) in enumerate(zip(keys, cols, rows, strict=True))}
    if len(cell) < len(bounds):
        raise ValueError("bounds: two tiles of one group cover the same grid cell")
    pairs = [(i, j) for (g, c, r), i in cell.items()
             for j in (cell.get((g, c + 1, r)), cell.get((g, c, r + 1))) if j is not None]
    return np.array(sorted((min(p), max(p)) for p in pairs), dtype=np.int64).reshape(-1, 2)


def neighbour_distances(features_a: np.ndarray, features_b: np.ndarray,
                        pairs: np.ndarray) -> np.ndarray:
    """The null model: cosine distances between edge-adjacent tiles *within* each vintage.

    How different two neighbouring places of the county look in one acquisition (features
    standardised per vintage, as in :func:`change_distance`), for both vintages: a tile that
    moved this far between the years now differs from itself as a neighbouring place does.
    """
    if features_a.shape != features_b.shape:
        raise ValueError(f"feature arrays differ in shape: {features_a.shape} and "
                         f"{features_b.shape}; embed the same tiles in both years")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = [_cosine_distance(f[pairs[:, 0]], f[pairs[:, 1]])
           for f in (standardise(features_a), standardise(features_b))]
    return np.concatenate(out)


def neighbourhood_mean(values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Mean of each tile's value and its edge neighbours' values (``pairs`` as from
    :func:`adjacent_pairs`); a tile without neighbours keeps its own value."""
    values = np.asarray(values, dtype=float)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    total, count = values.copy(), np.ones_like(values)
    for i, j in ((0, 1), (1, 0)):
        np.add.at(total, pairs[:, i], values[pairs[:, j]])
        np.add.at(count, pairs[:, i], 1.0)
    return np.asarray(total / count)


@dataclass(frozen=True)
class Hotspots:
    """Tiles chosen as change hotspots, and how.

    Attributes:
        mask: one boolean per tile.
        threshold: bar on the neighbourhood mean distance.
        lone_threshold: bar on a tile's own distance.
        neighbourhood: each tile's neighbourhood mean distance.
        method: the rule in words, with both bars, for a report.
    """

    mask: np.ndarray
    threshold: float
    lone_threshold: float
    neighbourhood: np.ndarray
    method: str

    @property
    def share(self) -> float:
        """Share of the tiles that are hotspots."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def select_hotspots(distances: np.ndarray, null: np.ndarray, pairs: np.ndarray, *,
                    quantile: float = NEIGHBOURHOOD_QUANTILE,
                    lone_quantile: float = LONE_QUANTILE) -> Hotspots:
    """Change hotspots with bars taken from the county's own null model.

    A tile is a hotspot when the mean distance of its neighbourhood (itself and its edge
    neighbours: real change is spatially coherent, the noise of one tile's distance is not)
    exceeds the ``quantile`` of ``null``, or when its own distance exceeds the
    ``lone_quantile`` of ``null``. Unlike a z-score, the bars do not depend on the spread of
    the distances, so a pair of years where nothing changed gets few or no hotspots.

    Args:
        distances: each tile's change distance (:func:`change_distance`).
        null: distances between neighbouring places within a vintage
            (:func:`neighbour_distances`).
        pairs: edge-adjacent tile pairs (:func:`adjacent_pairs`).
        quantile: null quantile that a neighbourhood mean must exceed.
        lone_quantile: null quantile that a tile's own distance must exceed.

    Raises:
        ValueError: an empty null (no two tiles share an edge), NaN distances, or quantiles
            outside 0-1.
    """
    distances, null = np.asarray(distances, dtype=float), np.asarray(null, dtype=float)
    if null.size == 0:
        raise ValueError("null is empty: no two tiles share an edge, so there are no "
                         "neighbouring places to compare change with")
    if np.isnan(distances).any() or np.isnan(null).any():
        raise ValueError("distances and null must not contain NaN")
    if not (0 < quantile < 1 and 0 < lone_quantile < 1):
        raise ValueError(f"quantiles must be between 0 and 1, got {quantile} and "
                         f"{lone_quantile}")
    threshold = float(np.quantile(null, quantile))
    lone_threshold = float(np.quantile(null, lone_quantile))
    neighbourhood = neighbourhood_mean(distances, pairs)
    mask = (neighbourhood > threshold) | (distances > lone_threshold)
    method = (f"neighbourhood mean distance above {threshold:.3f} (the {quantile:.0%} quantile "
              f"of distances between neighbouring tiles within a year) or own distance above "
              f"{lone_threshold:.3f} (their {lone_quantile:.0%} quantile)")
    return Hotspots(mask, threshold, lone_threshold, neighbourhood, method)


def change_hotspots(features_a: np.ndarray, features_b: np.ndarray, bounds: np.ndarray,
                    groups: Sequence[object] | None = None) -> tuple[np.ndarray, Hotspots]:
    """Change distance per tile and its hotspots, from both years' features and tile bounds.

    Returns:
        ``(distances, hotspots)``.

    Raises:
        ValueError: feature arrays of different shapes, or no two tiles share an edge.
    """
    distances = change_distance(features_a, features_b)
    pairs = adjacent_pairs(bounds, groups)
    null = neighbour_distances(features_a, features_b, pairs)
    return distances, select_hotspots(distances, null, pairs)


def agreement(detected: np.ndarray, reference: np.ndarray) -> dict[str, float | int]:
    """Precision, recall and IoU of detected tiles against reference tiles (booleans)."""
    detected, reference = detected.astype(bool), reference.astype(bool)
    tp = int((detected & reference).sum())
    union = int((detected | reference).sum())
    return {
        "detected": int(detected.sum()), "reference": int(reference.sum()), "both": tp,
        "tiles": int(detected.size),
        "precision": round(tp / int(detected.sum()), 4) if detected.any() else 0.0,
        "recall": round(tp / int(reference.sum()), 4) if reference.any() else 0.0,
        "iou": round(tp / union, 4) if union else 0.0,
        "base_rate": round(float(reference.mean()), 4) if reference.size else 0.0,
    }
