"""A split's parts for training and evaluation, and aerial augmentation; their pixels are
read by :mod:`landuse.tiles`, the path scoring uses too."""

from __future__ import annotations

import numpy as np
import pandas as pd

from landuse import labels, storage


def read_split(url: str) -> tuple[pd.DataFrame, pd.DataFrame, tuple[str, ...]]:
    """Train and validation rows of a split, and the classes training can learn.

    Classes keep the seed's order (labels.CLASSES) and are those present in training.

    Raises:
        ValueError: empty training set, a single class, or a validation class training
            never saw.
    """
    split = storage.read_parquet(url).to_pandas()
    train = split[split["split"] == "train"].reset_index(drop=True)
    val = split[split["split"] == "validation"].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"split {url} has no training tiles")
    classes = tuple(c for c in labels.CLASSES if c in set(train["label"]))
    extra = sorted(set(train["label"]) - set(classes))
    if extra:
        raise ValueError(f"split {url}: training labels {extra} are not land-use classes")
    if len(classes) < 2:
        raise ValueError(
            f"split {url}: training holds one class ({classes}); a classifier needs two"
        )
    unseen = sorted(set(val["label"]) - set(classes))
    if unseen:
        raise ValueError(f"split {url}: validation holds {unseen}, which training never saw")
    return train, val, classes


def read_part(url: str, part: str) -> pd.DataFrame:
    """The rows of one part of a split ('train', 'validation' or 'test'); may be empty.

    The trainers read only train and validation (:func:`read_split`); the test part is read
    here, once a model is chosen, so nothing about it can steer training or selection.
    """
    split = storage.read_parquet(url).to_pandas()
    return split[split["split"] == part].reset_index(drop=True)


def augment(tiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and 90° rotations: aerial tiles have no 'up'. Pixel values untouched."""
    out = np.empty_like(tiles)
    for i, tile in enumerate(tiles):
        t = np.rot90(tile, k=int(rng.integers(4)))
        out[i] = t[:, ::-1] if rng.random() < 0.5 else t
    return out
