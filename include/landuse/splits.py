"""Class-balanced training, validation and test splits that hold whole counties out.

As in the seed work, validation tiles come from other counties than training tiles. Because
validation also chooses the epochs and the champion, a third set of counties, *test*, is held
out of both: training never reads it, and every accuracy, expected-error and planted-change
figure the project reports is measured there. Each part is balanced by undersampling every
class to the rarest class's count (capped at ``tiles_per_class``); the same seed gives the
same split.

Tiles labelled by analysts' reviews (``label_source`` "review") go where their county goes
and are never undersampled away: balancing draws from the NLCD rows only. Where a single real
(non-synthetic) county has trainable tiles, it cannot be held out whole without leaving
training no real land, so its tiles are split in spatial blocks of :data:`BLOCK_TILES` ×
:data:`BLOCK_TILES` tiles instead (about 60/20/20 of the blocks to train / validation /
test): a block, and so every year of each of its tiles, lies in one part only.
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


PARTS = ("train", "validation", "test")
BLOCK_TILES = 5  # side of the spatial blocks a single real county is split in, in tiles
BLOCK_SHARES = {"validation": 0.2, "test": 0.2}  # of a single real county's blocks


def choose_validation_counties(
    counts: pd.Series, val_fraction: float, rng: np.random.Generator, keep: int = 1,
    total: int | None = None,
) -> list[str]:
    """Counties (shuffled by ``rng``) held out until they hold ``val_fraction`` of ``total``
    tiles (default: all of ``counts``).

    At least one county is chosen, and at least ``keep`` are left for the other parts.
    """
    order = list(counts.index[rng.permutation(len(counts))])
    total, held = total or counts.sum(), 0
    chosen: list[str] = []
    for county in order[: len(order) - keep]:
        if chosen and held / total >= val_fraction:
            break
        chosen.append(county)
        held += counts[county]
    return sorted(chosen)


def _balance(frame: pd.DataFrame, cap: int | None, rng: np.random.Generator) -> pd.DataFrame:
    """NLCD rows undersampled to the rarest class (capped), plus every reviewed row."""
    reviewed = frame["label_source"] == "review"
    if reviewed.any():
        return pd.concat([_undersample(frame[~reviewed], cap, rng), frame[reviewed]])
    return _undersample(frame, cap, rng)


def _undersample(frame: pd.DataFrame, cap: int | None,
                 rng: np.random.Generator) -> pd.DataFrame:
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


def block_parts(tile_ids: pd.Series, seed: int,
                block: int = BLOCK_TILES) -> tuple[pd.Series, dict[str, int]]:
    """Each tile's part when one county is split in spatial blocks of ``block`` × ``block``
    tiles (tile ids ``{epsg}_{col}_{row}``): the blocks are shuffled by ``seed`` and dealt
    out by :data:`BLOCK_SHARES` (each part at least one block when there are three or more;
    two blocks give train and validation, one block trains).

    Returns:
        The part of every tile (same index), and the number of blocks per part.

    Raises:
        ValueError: a tile id that is not ``{epsg}_{col}_{row}``.
    """
    from landuse.review import ReviewError, tile_position

    keys = []
    for tile_id in tile_ids:
        try:
            col, row = tile_position(str(tile_id))
        except ReviewError as err:
            raise ValueError(f"cannot split by blocks: {err}") from None
        keys.append(f"{str(tile_id).split('_', 1)[0]}_{col // block}_{row // block}")
    blocks = sorted(set(keys))
    # a generator of its own, so the counties' draws do not depend on the blocks
    order = [blocks[i] for i in np.random.default_rng([seed, block]).permutation(len(blocks))]
    n = len(order)
    counts = {name: (max(1, round(share * n)) if n >= 3 else 0)
              for name, share in BLOCK_SHARES.items()}
    if n == 2:
        counts["validation"] = 1
    part_of: dict[str, str] = {}
    i = 0
    for name in ("test", "validation"):
        for key in order[i : i + counts[name]]:
            part_of[key] = name
        i += counts[name]
    for key in order[i:]:
        part_of[key] = "train"
    per_part = {name: sum(1 for p in part_of.values() if p == name) for name in PARTS}
    return pd.Series([part_of[k] for k in keys], index=tile_ids.index), per_part


def make_split(
    manifests: pd.DataFrame,
    *,
    val_counties: list[str] | None = None,
    test_counties: list[str] | None = None,
    val_fraction: float = 0.25,
    test_fraction: float = 0.2,
    tiles_per_class: int | None = None,
    seed: int = 0,
    classes: tuple[str, ...] = labels.CLASSES,
) -> pd.DataFrame:
    """Select trainable tiles, hold counties out for validation and test, balance the classes.

    Test counties are chosen first (from ``seed``, among the counties not named for
    validation) when at least four counties have trainable tiles, so that two or more stay
    for training; with fewer there is no test part unless ``test_counties`` names one, and
    no held-out figure can be reported (reports say so).

    Where exactly one real (not ``synthetic``) county has trainable tiles and it is not
    named for validation or test, its tiles are split in spatial blocks (:func:`block_parts`)
    and the other counties are held out as above; the frame's ``attrs["real_blocks"]`` says
    so. Rows labelled by reviews (``label_source`` "review") are all kept; balancing
    undersamples the NLCD rows only.

    Args:
        manifests: concatenated tile manifests (any number of counties and years).
        val_counties: counties for validation; chosen from ``seed`` when not given.
        test_counties: counties for test; chosen from ``seed`` when not given; ``[]`` for
            none.
        val_fraction: share of trainable tiles to aim for in validation.
        test_fraction: share of trainable tiles to aim for in test (0: no test part).
        tiles_per_class: cap on tiles per class in each part.
        seed: random seed for county choice and undersampling.
        classes: the class set the dataset teaches (default: the seed's six and Water;
            :data:`labels.SEED_CLASSES` for the seed's own); tiles of other classes are left
            out.

    Returns:
        The selected rows with a ``split`` column ('train', 'validation' or 'test').

    Raises:
        ValueError: fewer than two counties have trainable tiles (and no single real county
            to split in blocks), a named county has none or is named for two parts, no
            county is left for training, or training would be left with fewer than two
            classes.
    """
    unknown = sorted(set(classes) - set(labels.CLASSES))
    if unknown or len(set(classes)) < 2:
        raise ValueError(f"classes must be two or more of {list(labels.CLASSES)}, got "
                         f"{list(classes)}")
    rng = np.random.default_rng(seed)
    manifests = with_provenance(manifests)
    trainable = manifests[manifests["trainable"].fillna(False).astype(bool)
                          & manifests["label"].isin(classes)]
    per_county = trainable.groupby("county").size().sort_index()
    named = set(val_counties or []) | set(test_counties or [])
    # counties known to be real: manifests record ``synthetic`` (frames without it: none)
    real = (sorted(set(trainable.loc[trainable["synthetic"].eq(False), "county"]))
            if "synthetic" in trainable else [])
    block_county = real[0] if len(real) == 1 and real[0] not in named else None
    if len(per_county) < 2 and block_county is None:
        raise ValueError(
            "a county-held-out split needs trainable tiles in at least two counties; found "
            f"{list(per_county.index) or 'none'} (check NLCD sources, the purity threshold "
            "and reviews)"
        )
    for part, named_part in (("validation", val_counties), ("test", test_counties)):
        missing = sorted(set(named_part or []) - set(per_county.index))
        if missing:
            raise ValueError(f"{part} counties {missing} have no trainable tiles")
    both = sorted(set(val_counties or []) & set(test_counties or []))
    if both:
        raise ValueError(f"counties {both} are named for both validation and test")
    if block_county is None and named >= set(per_county.index):
        raise ValueError("every county is held out; leave at least one for training")
    whole = per_county.drop(block_county) if block_county else per_county
    if test_counties is not None:
        test = sorted(test_counties)
    elif test_fraction > 0 and len(whole) - len(val_counties or []) >= (
            3 if val_counties else 4):
        pool = whole.drop(val_counties or [])  # two counties stay for training
        test = choose_validation_counties(pool, test_fraction, rng, keep=2 if val_counties else 3,
                                          total=int(whole.sum()))
    else:
        test = []
    if val_counties:
        val = sorted(val_counties)
    elif len(whole) - len(test) >= 2:
        val = choose_validation_counties(whole.drop(test), val_fraction, rng,
                                         total=int(whole.sum()))
    else:
        val = []  # a lone county trains; validation comes from the real county's blocks
    part = trainable["county"].map(lambda c: "test" if c in test else
                                   "validation" if c in val else "train")
    real_blocks = None
    if block_county is not None:
        mine = trainable["county"] == block_county
        block_part, blocks = block_parts(trainable.loc[mine, "tile_id"], seed)
        part[mine] = block_part
        real_blocks = {"county": block_county, "block_tiles": BLOCK_TILES, **blocks}
    parts = [_balance(trainable[part == name], tiles_per_class, rng).assign(split=name)
             for name in PARTS]
    if parts[0]["label"].nunique() < 2:
        raise ValueError(
            f"training would hold {parts[0]['label'].nunique()} class(es): a classifier needs two"
        )
    out = pd.concat(parts, ignore_index=True)
    if real_blocks is not None:
        out.attrs["real_blocks"] = real_blocks
    return out


def with_provenance(manifests: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows with ``label_source`` filled in where manifests written before reviews
    lack it: NLCD labelled every labelled tile."""
    out = manifests.copy()
    nlcd = out["label"].notna().map({True: "nlcd", False: None}).astype(object)
    if "label_source" in out:
        out["label_source"] = out["label_source"].astype(object).where(
            out["label_source"].notna(), nlcd)
    else:
        out["label_source"] = nlcd
    return out


def summarize(split: pd.DataFrame, manifest_hashes: dict[str, str], seed: int,
              classes: tuple[str, ...] = labels.CLASSES) -> dict[str, Any]:
    """Counts per split and class, counties per split, and the lineage of the inputs."""
    summary: dict[str, Any] = {"seed": seed, "manifests": manifest_hashes,
                               "classes": list(classes)}
    if "synthetic" in split:
        summary["synthetic_training"] = bool(split.loc[split["split"] == "train",
                                                       "synthetic"].all())
    if split.attrs.get("real_blocks"):
        summary["real_blocks"] = split.attrs["real_blocks"]
    for name in PARTS:
        part = split[split["split"] == name]
        counts = part.groupby("label").size()
        summary[name] = {
            "tiles": len(part),
            "counties": sorted(part["county"].unique().tolist()),
            "per_class": {c: int(counts.get(c, 0)) for c in classes},
            "missing_classes": [c for c in classes if c not in counts.index],
        }
        if "label_source" in part:
            summary[name]["reviewed"] = int((part["label_source"] == "review").sum())
    return summary


def build_dataset(
    manifest_urls: list[str],
    out_url: str,
    *,
    val_counties: list[str] | None = None,
    test_counties: list[str] | None = None,
    val_fraction: float = 0.25,
    test_fraction: float = 0.2,
    tiles_per_class: int | None = None,
    seed: int = 0,
    classes: tuple[str, ...] = labels.CLASSES,
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
        test_counties=test_counties,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        tiles_per_class=tiles_per_class,
        seed=seed,
        classes=tuple(classes),
    )
    summary = summarize(split, hashes, seed, tuple(classes))
    split_url = storage.join(out_url, "split.parquet")
    summary_url = storage.join(out_url, "summary.json")
    storage.write_parquet(split_url, pa.Table.from_pandas(split, preserve_index=False))
    storage.write_bytes(summary_url, json.dumps(summary, indent=2, sort_keys=True).encode())
    return Dataset(split_url, summary_url, summary)
