"""Class-balanced training/validation splits that hold whole counties out.

As in the seed work, validation tiles come from other counties than training tiles, so a
model is judged on ground it has never seen. Each split is balanced by undersampling every
class to the rarest class's count (capped at ``tiles_per_class``); the same seed gives the
same split.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from landuse import labels, storage


@dataclass(frozen=True)
class Dataset:
    """A written split and where it lives."""

    url: str
    summary_url: str
    summary: dict[str, Any]


def choose_validation_counties(
    counts: pd.Series, val_fraction: float, rng: np.random.Generator
) -> list[str]:
    """Counties (shuffled by ``rng``) taken for validation until they hold ``val_fraction``.

    At least one county goes to each side.
    """
    order = list(counts.index[rng.permutation(len(counts))])
    total, held = counts.sum(), 0
    chosen: list[str] = []
    for county in order[:-1]:
        if chosen and held / total >= val_fraction:
            break
        chosen.append(county)
        held += counts[county]
    return sorted(chosen)


def _balance(frame: pd.DataFrame, cap: int | None, rng: np.random.Generator) -> pd.DataFrame:
    present = frame.groupby("label").size()
    n = int(present.min()) if len(present) else 0
    if cap is not None:
        n = min(n, cap)
    parts = []
    for label in sorted(present.index):
        rows = frame[frame["label"] == label]
        take = rng.choice(len(rows), size=n, replace=False)
        parts.append(rows.iloc[np.sort(take)])
    return pd.concat(parts) if parts else frame.iloc[0:0]


def make_split(
    manifests: pd.DataFrame,
    *,
    val_counties: list[str] | None = None,
    val_fraction: float = 0.25,
    tiles_per_class: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Select trainable tiles, hold counties out for validation, balance the classes.

    Args:
        manifests: concatenated tile manifests (any number of counties and years).
        val_counties: counties for validation; chosen from ``seed`` when not given.
        val_fraction: share of trainable tiles to aim for in validation.
        tiles_per_class: cap on tiles per class in each split.
        seed: random seed for county choice and undersampling.

    Returns:
        The selected rows with a ``split`` column ('train' or 'validation').

    Raises:
        ValueError: fewer than two counties have trainable tiles, a named validation county
            has none, or training would be left with fewer than two classes.
    """
    rng = np.random.default_rng(seed)
    trainable = manifests[manifests["trainable"]]
    per_county = trainable.groupby("county").size().sort_index()
    if len(per_county) < 2:
        raise ValueError(
            "a county-held-out split needs trainable tiles in at least two counties; found "
            f"{list(per_county.index) or 'none'} (check NLCD sources and the purity threshold)"
        )
    if val_counties:
        missing = sorted(set(val_counties) - set(per_county.index))
        if missing:
            raise ValueError(f"validation counties {missing} have no trainable tiles")
        if set(val_counties) >= set(per_county.index):
            raise ValueError("every county is in validation; leave at least one for training")
        chosen = sorted(val_counties)
    else:
        chosen = choose_validation_counties(per_county, val_fraction, rng)
    is_val = trainable["county"].isin(chosen)
    train = _balance(trainable[~is_val], tiles_per_class, rng).assign(split="train")
    val = _balance(trainable[is_val], tiles_per_class, rng).assign(split="validation")
    if train["label"].nunique() < 2:
        raise ValueError(
            f"training would hold {train['label'].nunique()} class(es): a classifier needs two"
        )
    return pd.concat([train, val], ignore_index=True)


def summarize(split: pd.DataFrame, manifest_hashes: dict[str, str], seed: int) -> dict[str, Any]:
    """Counts per split and class, counties per split, and the lineage of the inputs."""
    summary: dict[str, Any] = {"seed": seed, "manifests": manifest_hashes}
    for name in ("train", "validation"):
        part = split[split["split"] == name]
        counts = part.groupby("label").size()
        summary[name] = {
            "tiles": len(part),
            "counties": sorted(part["county"].unique().tolist()),
            "per_class": {c: int(counts.get(c, 0)) for c in labels.CLASSES},
            "missing_classes": [c for c in labels.CLASSES if c not in counts.index],
        }
    return summary


def build_dataset(
    manifest_urls: list[str],
    out_url: str,
    *,
    val_counties: list[str] | None = None,
    val_fraction: float = 0.25,
    tiles_per_class: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Read manifests, make the split, and write ``split.parquet`` and ``summary.json``.

    The summary records a SHA-256 of every input manifest, so a model trained on the split
    can name exactly what it learned from.
    """
    frames, hashes = [], {}
    for url in sorted(manifest_urls):
        data = storage.read_bytes(url)
        hashes[url] = hashlib.sha256(data).hexdigest()
        frames.append(pq.read_table(io.BytesIO(data)).to_pandas())
    if not frames:
        raise ValueError("no manifests given: tile at least two labelled counties first")
    split = make_split(
        pd.concat(frames, ignore_index=True),
        val_counties=val_counties,
        val_fraction=val_fraction,
        tiles_per_class=tiles_per_class,
        seed=seed,
    )
    summary = summarize(split, hashes, seed)
    split_url = storage.join(out_url, "split.parquet")
    summary_url = storage.join(out_url, "summary.json")
    storage.write_parquet(split_url, pa.Table.from_pandas(split, preserve_index=False))
    storage.write_bytes(summary_url, json.dumps(summary, indent=2, sort_keys=True).encode())
    return Dataset(split_url, summary_url, summary)
