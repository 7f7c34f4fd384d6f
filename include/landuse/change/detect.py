"""Per-tile land-use change between a reference year and a predicted year.

The reference is year A as predictions of the same model (the default: model error then
cancels where the model errs alike in both years) or as NLCD labels (from year A's
manifest: every model error on year B counts as change); year B is always predictions.
A tile is *newly developed* when it was Undeveloped or Cultivated in A and is Developed in
B, as in the seed work. Predictions below a confidence threshold are
*uncertain* and take part in no transition; an optional 3×3 plurality filter smooths the
predicted groups first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from landuse import labels, storage
from landuse.change.grid import TileLayout, layouts, plurality_smooth
from landuse.scoring.spark import predictions_url
from landuse.tiling import manifest_url

Reference = Literal["auto", "labels", "predictions"]
WATER = labels.WATER_CLASS
# Categories of the group maps: the seed's three groups, then water.
MAP_GROUPS: tuple[str, ...] = labels.GROUPS
NEWLY_DEVELOPED_FROM = frozenset({"Undeveloped", "Cultivated"})
GEOMETRY = ["tile_id", "crs", "minx", "miny", "maxx", "maxy", "image_url"]


class ChangeInputError(ValueError):
    """The inputs of a change run are missing or do not fit together."""


@dataclass
class YearMap:
    """One year's land use per tile: ``klass``, ``group`` and ``confidence`` (of the group),
    indexed by tile id; for predictions also the class probabilities ``p_{class}``."""

    year: int
    source: str  # "labels" or "predictions"
    tiles: pd.DataFrame
    classes: tuple[str, ...] = labels.CLASSES
    model_id: str | None = None
    url: str = ""


@dataclass
class Change:
    """What changed between a reference and a predicted year, tile by tile."""

    county: str
    reference: YearMap
    year_a: YearMap | None  # predictions of year A (None when not scored)
    year_b: YearMap
    tiles: pd.DataFrame  # geometry + ref/a/b columns + transition + newly_developed
    layouts: list[TileLayout]
    threshold: float
    smoothed: bool

    @property
    def newly_developed(self) -> pd.DataFrame:
        """The tiles that became Developed."""
        return self.tiles[self.tiles["newly_developed"]]


def read_manifest(root: str, county: str, year: int) -> pd.DataFrame:
    """Year ``year``'s manifest of ``county`` (every tile, with geometry and labels).

    Raises:
        ChangeInputError: there is none.
    """
    url = manifest_url(root, county, year)
    if not storage.exists(url):
        raise ChangeInputError(f"no tiles of county {county} in {year}: {url} does not exist "
                               "(run naip_dataset for that year first)")
    return storage.read_parquet(url).to_pandas()


def read_predictions(root: str, county: str, year: int) -> YearMap:
    """Year ``year``'s predictions of ``county`` as a :class:`YearMap`.

    Raises:
        ChangeInputError: there are none, or every tile failed, or they mix models.
    """
    url = predictions_url(storage.join(root, "predictions"), county, year)
    if not storage.exists(url):
        raise ChangeInputError(f"no predictions for county {county} in {year}: {url} does not "
                               "exist (score that year first: landuse_scoring)")
    frame = storage.read_parquet(url).to_pandas()
    ok = frame[frame["error"].isna()]
    if ok.empty:
        raise ChangeInputError(f"predictions {url} have no scored tile ({len(frame)} errors)")
    models = sorted(ok["model_id"].dropna().unique())
    if len(models) > 1:
        raise ChangeInputError(f"predictions {url} mix models {models}: rescore the year")
    prob_cols = [f"p_{c}" for c in labels.CLASSES]
    classes = tuple(c for c, col in zip(labels.CLASSES, prob_cols, strict=True)
                    if ok[col].notna().any())
    indexed = frame.set_index("tile_id")
    probs = indexed[prob_cols]
    tiles = pd.DataFrame({"klass": indexed["predicted"], "group": indexed["predicted_group"]})
    for g in labels.GROUPS:
        members = [f"p_{c}" for c, grp in labels.CLASS_TO_GROUP.items() if grp == g]
        tiles[f"p_group_{g}"] = probs[members].sum(axis=1, min_count=1)
    tiles["confidence"] = np.nan
    for g in labels.GROUPS:
        is_g = tiles["group"] == g
        tiles.loc[is_g, "confidence"] = tiles.loc[is_g, f"p_group_{g}"]
    tiles = tiles.join(probs)
    return YearMap(year, "predictions", tiles, classes, models[0] if models else None, url)


def labels_map(manifest: pd.DataFrame, county: str, year: int) -> YearMap:
    """Year ``year``'s NLCD-derived labels (plurality class per tile, water included).

    Raises:
        ChangeInputError: the manifest has no labels (the county was tiled without NLCD).
    """
    frame = manifest.set_index("tile_id")
    label = frame["label"].where(frame["label"].isin(labels.CLASSES))
    if label.isna().all():
        raise ChangeInputError(f"county {county} has no NLCD labels for {year}: use predictions "
                               "of that year as the reference")
    group = label.map(labels.CLASS_TO_GROUP)
    tiles = pd.DataFrame({"klass": label, "group": group, "confidence": 1.0})
    return YearMap(year, "labels", tiles, labels.CLASSES)


def check_grids(county: str, a: pd.DataFrame, b: pd.DataFrame, year_a: int,
                year_b: int) -> pd.DataFrame:
    """The tiles both manifests have, after checking that their grids are the same.

    Raises:
        ChangeInputError: different tile sizes, the same id on different ground, or no tile
            in common.
    """
    size_a = sorted(float(s) for s in (a["maxx"] - a["minx"]).round(6).unique())
    size_b = sorted(float(s) for s in (b["maxx"] - b["minx"]).round(6).unique())
    if size_a != size_b:
        raise ChangeInputError(f"tile grids of {county} do not align: {year_a} tiles are "
                               f"{size_a} m, {year_b} tiles are {size_b} m (retile one year)")
    both = a[GEOMETRY].merge(b[GEOMETRY], on="tile_id", suffixes=("_a", ""))
    if both.empty:
        raise ChangeInputError(f"tiles of {county} in {year_a} and {year_b} have no tile in "
                               "common (different UTM zones or areas)")
    # absolute tolerance: a relative one is metres at UTM coordinates
    off = ~np.isclose(both[["minx_a", "miny_a", "maxx_a", "maxy_a"]].to_numpy(),
                      both[["minx", "miny", "maxx", "maxy"]].to_numpy(),
                      rtol=0, atol=1e-3).all(axis=1)
    off |= both["crs_a"] != both["crs"]
    if off.any():
        raise ChangeInputError(f"tile grids of {county} do not align: tile "
                               f"{both.loc[off, 'tile_id'].iloc[0]} covers other ground in "
                               f"{year_a} than in {year_b}")
    return both.drop(columns=["crs_a", "minx_a", "miny_a", "maxx_a", "maxy_a"]).rename(
        columns={"image_url": "image_url_b"})


def check_classes(model: YearMap, reference: YearMap) -> None:
    """Two models' maps compare only when they predict the same classes; NLCD labels hold
    every class, so a model that knows fewer (a class absent from its training) still
    compares with them (its missing classes are reported, see :func:`missing_classes`).

    Raises:
        ChangeInputError: naming both class lists.
    """
    if reference.source == "labels":
        return
    if set(model.classes) != set(reference.classes):
        raise ChangeInputError(
            f"model {model.model_id} predicts {list(model.classes)} but the {reference.year} "
            f"model {reference.model_id} predicts {list(reference.classes)}: compare maps of "
            "the same classes")


def missing_classes(model: YearMap) -> list[str]:
    """Land-use classes the model cannot predict (its training had no tile of them)."""
    return [c for c in labels.CLASSES if c not in model.classes]


def detect(
    county: str,
    reference: YearMap,
    year_b: YearMap,
    geometry: pd.DataFrame,
    *,
    year_a: YearMap | None = None,
    threshold: float = 0.5,
    smooth: bool = False,
    centre_weight: float = 2.0,
) -> Change:
    """Transitions per tile between ``reference`` (year A) and the predictions ``year_b``.

    Args:
        county: for messages.
        reference: labels or predictions of year A.
        year_b: predictions of year B.
        geometry: the tiles both years have (see :func:`check_grids`).
        year_a: predictions of year A, for maps and counts, when scored.
        threshold: predictions whose group probability is below it are uncertain.
        smooth: apply the 3×3 plurality filter to predicted groups first.
        centre_weight: votes of the centre tile in the filter.

    Raises:
        ChangeInputError: the model's classes differ from the reference's.
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    check_classes(year_b, reference)
    if year_a is not None and year_a is not reference:
        check_classes(year_b, year_a)
    tiles = geometry.set_index("tile_id")
    grids = layouts(tiles.reset_index())
    for prefix, ymap in (("ref", reference), ("a", year_a), ("b", year_b)):
        if ymap is None:
            continue
        t = ymap.tiles.reindex(tiles.index)
        group = t["group"].where(t["confidence"] >= threshold) if ymap.source == "predictions" \
            else t["group"]
        if smooth and ymap.source == "predictions":
            group = _smooth_groups(group, grids, centre_weight)
        tiles[f"{prefix}_class"] = t["klass"]
        tiles[f"{prefix}_group"] = group
        tiles[f"{prefix}_confidence"] = t["confidence"]
    for column in [c for c in year_b.tiles if c.startswith("p_")]:
        tiles[f"b_{column}"] = year_b.tiles[column].reindex(tiles.index)
    known = tiles["ref_group"].notna() & tiles["b_group"].notna()
    tiles["transition"] = (tiles["ref_group"] + " -> " + tiles["b_group"]).where(known)
    tiles["newly_developed"] = (known & tiles["ref_group"].isin(NEWLY_DEVELOPED_FROM)
                                & (tiles["b_group"] == "Developed"))
    tiles["changed"] = known & (tiles["ref_group"] != tiles["b_group"])
    return Change(county, reference, year_a, year_b, tiles.reset_index(), grids, threshold,
                  smooth)


def _smooth_groups(group: pd.Series, grids: list[TileLayout], centre_weight: float) -> pd.Series:
    codes = group.map({g: i for i, g in enumerate(MAP_GROUPS)})
    out = pd.Series(index=group.index, dtype=object)
    for layout in grids:
        raster = layout.paint(codes, -1, "int16")
        smoothed = layout.read(plurality_smooth(raster, len(MAP_GROUPS), centre_weight))
        out.loc[smoothed.index] = [MAP_GROUPS[v] if v >= 0 else None for v in smoothed]
    return out


def transition_matrix(change: Change) -> pd.DataFrame:
    """Tiles per (reference group, year-B group); uncertain or unlabelled tiles left out."""
    t = change.tiles.dropna(subset=["ref_group", "b_group"])
    rows = [g for g in MAP_GROUPS if g in set(t["ref_group"])]
    return pd.crosstab(t["ref_group"], t["b_group"]).reindex(
        index=rows, columns=list(labels.GROUPS), fill_value=0)


def count_table(change: Change) -> pd.DataFrame:
    """The seed's count table: tiles of each group, for the reference and every predicted
    year, and the seed's shares of the three land groups (over land tiles: water, uncertain
    and unlabelled tiles apart)."""
    rows = []
    sources = [("ref", change.reference)]
    if change.year_a is not None and change.year_a is not change.reference:
        sources.append(("a", change.year_a))
    sources.append(("b", change.year_b))
    for prefix, ymap in sources:
        group = change.tiles[f"{prefix}_group"]
        counts = group.value_counts()
        total = int(counts.reindex(list(labels.SEED_GROUPS), fill_value=0).sum())
        row: dict[str, object] = {"map": f"{ymap.year} {ymap.source}"}
        for g in labels.SEED_GROUPS:
            n = int(counts.get(g, 0))
            row[g] = n
            row[f"{g} share"] = round(n / total, 4) if total else None
        row[WATER] = int(counts.get(WATER, 0))
        row["no group"] = int(group.isna().sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("map")
