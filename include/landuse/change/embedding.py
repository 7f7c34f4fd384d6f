"""Change without labels: how far each tile moved in a backbone's feature space.

Each tile of both years goes through an ImageNet backbone (SqueezeNet v1.1, whose weights
ship with the project); features are standardised per vintage (every feature to zero mean
and unit variance over the county's tiles of that year), which removes most of what differs
between two acquisitions as a whole (sun, season, sensor), and the change of a tile is the
cosine distance between its two standardised feature vectors. Hotspots are tiles whose
distance is unusually large for the county: a robust z-score (median and MAD) above a bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from landuse.progress import track

# Robust z-score above which a tile is a change hotspot.
HOTSPOT_Z = 1.0


def embed(urls: Sequence[str], backbone: str = "squeezenet", batch_size: int = 32,
          weights: str = "imagenet") -> np.ndarray:
    """Pooled backbone features (one row per tile image, in order).

    Raises:
        ImageError: a tile is missing or unreadable (the message names it).
    """
    from landuse.models.backbones import build_backbone
    from landuse.models.data import load_tiles
    from landuse.models.preprocessing import to_tensor

    net = build_backbone(backbone, weights)
    out = []
    for start in track(range(0, len(urls), batch_size), total=-(-len(urls) // batch_size),
                       desc="embedding tiles"):
        tiles = load_tiles(list(urls[start:start + batch_size]), net.preprocessing)
        out.append(np.asarray(net.model(to_tensor(tiles, net.preprocessing), training=False)))
    return np.concatenate(out) if out else np.zeros((0, net.features), dtype=np.float32)


def standardise(features: np.ndarray) -> np.ndarray:
    """Every feature to zero mean and unit variance over the tiles of one vintage."""
    return (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)


def change_distance(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """Cosine distance (0-2) between each tile's standardised features in two vintages."""
    if features_a.shape != features_b.shape:
        raise ValueError(f"feature arrays differ in shape: {features_a.shape} and "
                         f"{features_b.shape}; embed the same tiles in both years")
    a, b = standardise(features_a), standardise(features_b)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return np.asarray(1.0 - cos)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 MAD): a z-score that a few big changes do not inflate."""
    median = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - median)))
    return np.asarray((values - median) / (mad if mad > 0 else 1e-12))


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
