"""One change run: a county between year A and year B, from inputs to a published report.

Everything is checked before anything is written (missing years, grids that do not align,
models whose classes differ), every file is rendered in memory, and the report folder
``{root}/change/county={county}/{A}-{B}/`` is published as one unit with ``summary.json``
as its commit marker.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rasterio.windows import from_bounds

from landuse import labels, review, storage
from landuse.change import (
    REVIEWS,
    SUMMARY,
    change_url,
    embedding,
    expected,
    features,
    maps,
    normalise,
    significance,
)
from landuse.change.detect import (
    NEWLY_DEVELOPED_FROM,
    Change,
    ChangeInputError,
    Reference,
    YearMap,
    check_grids,
    count_table,
    detect,
    labels_map,
    missing_classes,
    read_manifest,
    read_predictions,
    transition_matrix,
)
from landuse.change.water import water_shares
from landuse.models.metrics import classes_measured
from landuse.raster import RasterError, open_raster, read_checked

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
# A tile's water share must change by this much (absolute) to count as water change.
WATER_CHANGE = 0.15
# A tile counts as planted new development when this share of it became Developed.
PLANTED_SHARE = 0.5


@dataclass(frozen=True)
class ChangeResult:
    """Where a change run published its report, and its headline figures."""

    url: str
    summary: dict[str, Any]


def run_change(
    root: str,
    county: str,
    year_a: int,
    year_b: int,
    *,
    reference: Reference = "auto",
    threshold: float = 0.5,
    smooth: bool = False,
    centre_weight: float = 2.0,
    embeddings: bool = True,
    fdr: float = significance.FDR,
    truth: str | None = None,
    out: str | None = None,
    spark: SparkSession | None = None,
) -> ChangeResult:
    """Detect change in ``county`` from ``year_a`` to ``year_b`` and publish the report.

    Args:
        root: storage root with ``naip/{county}/{year}/manifest.parquet`` and
            ``predictions/county=.../year=.../predictions.parquet``.
        county: county name.
        year_a: the earlier year (the reference).
        year_b: the later year (predictions).
        reference: ``predictions`` (year A scored by the same model as year B),
            ``labels`` (NLCD labels of year A: model error on year B counts as change), or
            ``auto``: same-model predictions where year A has them, else labels.
        threshold: group probability below which a prediction is uncertain.
        smooth: 3×3 plurality smoothing of predicted groups.
        centre_weight: votes of the centre tile when smoothing.
        embeddings: also rank change by backbone-feature distance (no labels needed), test
            every tile against a no-change null (:mod:`landuse.change.significance`), and
            check both against water change where the scenes have NIR.
        fdr: false-discovery rate of the no-change test.
        spark: computes a county-year's change features (:mod:`landuse.change.features`)
            where they are not committed yet; default: in this process.
        truth: folder of planted-change truth rasters
            (``{county}_newly_developed_{A}_{B}.tif``), for synthetic counties.
        out: report folder; default :func:`change_url`.

    Raises:
        ChangeInputError: missing years, grids that do not align, classes that differ.
    """
    if year_a >= year_b:
        raise ChangeInputError(f"year A ({year_a}) must be before year B ({year_b})")
    if not 0 < fdr < 1:
        raise ChangeInputError(f"fdr must be between 0 and 1 (a false-discovery rate), got "
                               f"{fdr}")
    manifest_a = read_manifest(root, county, year_a)
    manifest_b = read_manifest(root, county, year_b)
    geometry = check_grids(county, manifest_a, manifest_b, year_a, year_b)
    pred_b = read_predictions(root, county, year_b)
    pred_a = _optional_predictions(root, county, year_a)
    ref, why = _reference(reference, manifest_a, pred_a, pred_b, county, year_a)
    change = detect(county, ref, pred_b, geometry, year_a=pred_a, threshold=threshold,
                    smooth=smooth, centre_weight=centre_weight)
    evaluation = _evaluation(root, pred_b.model_id)
    summary = {**_caveat(evaluation, manifest_b), **_summary(change, manifest_a, manifest_b)}
    summary["reference_choice"] = why
    summary["model"] = _model_figures(evaluation, county)
    summary["expected_from_model_error"] = _expected(change, evaluation)
    truth_url = (storage.join(truth, f"{county}_newly_developed_{year_a}_{year_b}.tif")
                 if truth else None)
    if truth_url and storage.exists(truth_url):
        planted = _planted(truth_url, change.tiles)
        change.tiles["planted"] = planted
        summary["planted_change"] = {"truth": truth_url, **embedding.agreement(
            change.tiles["newly_developed"].to_numpy(), planted.to_numpy())}
    if embeddings:
        feats_a, feats_b = (features.county_year_features(root, county, year, spark=spark)
                            .reindex(change.tiles["tile_id"]) for year in (year_a, year_b))
        summary["embedding_change"] = _embedding_change(change, manifest_a, manifest_b,
                                                        feats_a, feats_b)
        summary["change_test"] = _change_test(change, manifest_a, manifest_b, feats_a, feats_b,
                                              fdr, spark)
    url = out or change_url(root, county, year_a, year_b)
    answers = review.read_answers(url)
    if len(answers):  # a report published again keeps its analysts' answers and figures
        summary["review"] = {"status": "earlier answers",
                             **review.figures(change.tiles, answers)}
    files = _render(change, summary)
    summary["files"] = sorted(files)
    files[SUMMARY] = json.dumps(summary, indent=2, default=str).encode()
    storage.write_folder(url, files, commit=SUMMARY, keep=(REVIEWS,))
    log.info("change %s %d-%d: %d newly developed tiles -> %s", county, year_a, year_b,
             summary["newly_developed"], url)
    return ChangeResult(url, summary)


def read_summary(url: str) -> dict[str, Any] | None:
    """A published report's summary, or None when there is no whole report at ``url``."""
    marker = storage.join(url, SUMMARY)
    return json.loads(storage.read_bytes(marker)) if storage.exists(marker) else None


def _optional_predictions(root: str, county: str, year: int) -> YearMap | None:
    try:
        return read_predictions(root, county, year)
    except ChangeInputError as err:
        if "does not exist" not in str(err):
            raise
        return None


def _reference(reference: Reference, manifest_a: pd.DataFrame, pred_a: YearMap | None,
               pred_b: YearMap, county: str, year_a: int) -> tuple[YearMap, str]:
    """Year A's map to compare with, and why it was chosen."""
    if reference not in ("auto", "labels", "predictions"):
        raise ChangeInputError(f"reference must be auto, labels or predictions, got {reference}")
    same_model = pred_a is not None and pred_a.model_id == pred_b.model_id
    if reference == "predictions" or (reference == "auto" and same_model):
        if pred_a is None:
            raise ChangeInputError(f"county {county} has no predictions for {year_a}: score "
                                   f"{year_a} with the model of year B ({pred_b.model_id}) "
                                   "first (landuse_scoring), or compare with reference=labels")
        if not same_model:
            raise ChangeInputError(
                f"county {county}: {year_a} was scored by {pred_a.model_id}, {pred_b.year} by "
                f"{pred_b.model_id}; rescore {year_a} with {pred_b.model_id} (landuse_scoring) "
                "so that one model's errors are compared with themselves, or compare with "
                "reference=labels")
        return pred_a, f"{year_a} predictions by the same model as {pred_b.year}"
    has_labels = manifest_a["label"].isin(labels.CLASSES).any()
    if reference == "labels" or has_labels:
        why = ("asked for" if reference == "labels" else
               f"{year_a} has no predictions by {pred_b.model_id}")
        return labels_map(manifest_a, county, year_a), (
            f"{year_a} NLCD labels ({why}): every model error on {pred_b.year} counts as change")
    raise ChangeInputError(
        f"county {county} has no NLCD labels and no predictions by {pred_b.model_id} for "
        f"{year_a}: score {year_a} with that model first (landuse_scoring) or tile it with NLCD")


def _evaluation(root: str, model_id: str | None) -> dict[str, Any] | None:
    """The model's held-out (test) evaluation, when training recorded one under the root."""
    from landuse.models.tracking import models_root, read_evaluation

    return read_evaluation(models_root(root), model_id) if model_id else None


def _caveat(evaluation: dict[str, Any] | None, manifest_b: pd.DataFrame) -> dict[str, Any]:
    """A first line for real counties: the model's figure on reviewed real test tiles and
    how many tiles stand behind it, or, without one, that a model which learned from
    synthetic imagery only has never seen real land."""
    real = not bool(manifest_b["synthetic"].any()) if "synthetic" in manifest_b else True
    if not (real and evaluation):
        return {}
    reviewed = evaluation.get("metrics_reviewed") or {}
    if reviewed.get("tiles") and reviewed.get("accuracy") is not None:
        measured = reviewed.get("measured_classes") or []
        test_tiles = (evaluation.get("metrics") or {}).get("tiles", reviewed["tiles"])
        others = ("; its other figures come from synthetic counties"
                  if reviewed.get("others_synthetic") else
                  "; its other figures come from its other test tiles"
                  if test_tiles > reviewed["tiles"] else "")
        return {"caveat": (
            f"Model {evaluation['model_id']} was measured on {reviewed['tiles']} reviewed real "
            f"test tiles of {', '.join(reviewed.get('counties') or ['real counties'])} "
            f"({len(measured)} classes: {', '.join(measured)}): accuracy "
            f"{reviewed['accuracy']:.2f}{others}.")}
    if evaluation.get("trained_on_synthetic"):
        return {"caveat": (
            f"Model {evaluation['model_id']} was trained on synthetic imagery only and has "
            "never seen real land: its land-use classes and counts for this real county are "
            "not validated. The label-free change (embedding distance) and the water maps "
            "do not depend on it.")}
    return {}


def _model_figures(evaluation: dict[str, Any] | None, county: str) -> dict[str, Any]:
    """The model's test figures and this county's part in its split."""
    if not evaluation:
        return {"note": "no held-out evaluation of this model was recorded (train it with "
                        "landuse_training on a split with test counties)"}
    out: dict[str, Any] = {"model_id": evaluation["model_id"],
                           "split_url": evaluation["split_url"],
                           "trained_on_synthetic": evaluation.get("trained_on_synthetic")}
    m = evaluation.get("metrics")
    if m:
        out.update(split="test", test_counties=m["counties"], test_tiles=m["tiles"],
                   accuracy=round(m["accuracy"], 4),
                   group_accuracy=round(m.get("group_accuracy") or 0, 4),
                   measured_on=classes_measured(m))
    else:
        out["note"] = evaluation.get("note", "no test counties")
    try:
        split = storage.read_parquet(evaluation["split_url"]).to_pandas()
    except storage.StorageError as err:
        if isinstance(err, storage.StorageUnavailable):
            raise
        return out
    parts = sorted(split.loc[split["county"] == county, "split"].unique())
    out["county_part"] = parts[0] if len(parts) == 1 else ("none" if not parts else parts)
    return out


def _expected(change: Change, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """Counts expected from model error alone, from the model's test confusion."""
    m = (evaluation or {}).get("metrics") or {}
    if "group_confusion" not in m:
        return {"note": "unknown: no test confusion matrix recorded for this model"}
    t = change.tiles
    compared = t.loc[t["transition"].notna(), "ref_group"]
    groups = m.get("groups", labels.SEED_GROUPS)  # evaluations before Water was a class
    pairs = [(g, h) for g in groups for h in groups if g != h]
    return {
        "from": f"test counties {', '.join(m['counties'])} ({m['tiles']} tiles)",
        "newly_developed": expected.expected_false(
            compared, [(g, "Developed") for g in sorted(NEWLY_DEVELOPED_FROM)],
            m["group_confusion"], groups=groups),
        "changed": expected.expected_false(compared, pairs, m["group_confusion"],
                                           groups=groups),
    }


def _summary(change: Change, manifest_a: pd.DataFrame,
             manifest_b: pd.DataFrame) -> dict[str, Any]:
    t = change.tiles
    summary: dict[str, Any] = {
        "county": change.county,
        "year_a": change.reference.year, "year_b": change.year_b.year,
        "reference": change.reference.source,
        "model_b": change.year_b.model_id,
        "model_a": change.year_a.model_id if change.year_a else None,
        "predictions_b": change.year_b.url,
        "predictions_a": change.year_a.url if change.year_a else None,
        "threshold": change.threshold, "smoothed": change.smoothed,
        "tiles": len(t),
        "compared": int(t["transition"].notna().sum()),
        "uncertain": int((t["ref_group"].notna() & t["b_group"].isna()).sum()),
        "newly_developed": int(t["newly_developed"].sum()),
        "changed": int(t["changed"].sum()),
        "counts": count_table(change).reset_index().to_dict("records"),
        "transitions": {k: {c: int(n) for c, n in v.items()}
                        for k, v in transition_matrix(change).to_dict("index").items()},
        "accuracy": {},
        "missing_classes": missing_classes(change.year_b),
    }
    for ymap, manifest in ((change.year_b, manifest_b), (change.year_a, manifest_a)):
        if ymap is not None and ymap.source == "predictions":
            report = _accuracy(ymap, manifest)
            if report:
                summary["accuracy"][str(ymap.year)] = report
    return summary


def _accuracy(ymap: YearMap, manifest: pd.DataFrame) -> dict[str, Any] | None:
    from landuse.models.metrics import report

    both = manifest.set_index("tile_id")[["label"]].join(ymap.tiles["klass"], how="inner")
    both = both[both["label"].isin(ymap.classes) & both["klass"].notna()]
    if both.empty:
        return None
    r = report(list(both["label"]), list(both["klass"]), list(ymap.classes))
    return {"tiles": len(both), "accuracy": round(r["accuracy"], 4),
            "group_accuracy": round(r["group_accuracy"], 4)}


def _planted(truth_url: str, tiles: pd.DataFrame) -> pd.Series:
    """Whether at least :data:`PLANTED_SHARE` of each tile became Developed in the truth."""
    out = pd.Series(False, index=tiles.index)
    with open_raster(truth_url) as src:
        for i, row in tiles.iterrows():
            window = from_bounds(row.minx, row.miny, row.maxx, row.maxy, src.transform)
            cells = read_checked(src, truth_url, indexes=1, window=window.round_offsets()
                                 .round_lengths(), boundless=True, fill_value=0)
            out[i] = bool(cells.size and cells.mean() >= PLANTED_SHARE)
    return out


def _embedding_change(change: Change, manifest_a: pd.DataFrame, manifest_b: pd.DataFrame,
                      feats_a: pd.DataFrame, feats_b: pd.DataFrame) -> dict[str, Any]:
    """Feature distance per tile and the hotspot rule; water change as the check."""
    t = change.tiles
    both = pd.Series(feats_a["embedding"].notna().to_numpy()
                     & feats_b["embedding"].notna().to_numpy(), index=t.index)
    if both.sum() < 3:
        return {"tiles": int(both.sum()), "note": "too few tiles with a scene window in both "
                "years"}
    n = int(both.sum())
    features_a = np.stack(feats_a.loc[both.to_numpy(), "embedding"].to_numpy())
    features_b = np.stack(feats_b.loc[both.to_numpy(), "embedding"].to_numpy())
    try:
        distance, hot = embedding.change_hotspots(
            features_a, features_b,
            t.loc[both, ["minx", "miny", "maxx", "maxy"]].to_numpy(float),
            list(t.loc[both, "crs"]))
    except ValueError as err:  # no two tiles share an edge
        return {"tiles": n, "note": f"no hotspots chosen: {err}"}
    t.loc[both, "embedding_distance"] = distance
    t.loc[both, "embedding_neighbourhood"] = hot.neighbourhood
    t["hotspot"] = False
    t.loc[both, "hotspot"] = hot.mask
    result: dict[str, Any] = {"backbone": "squeezenet", "tiles": n,
                              "hotspots": int(hot.mask.sum()),
                              "share_flagged": round(hot.share, 4),
                              "threshold": round(hot.threshold, 4),
                              "lone_threshold": round(hot.lone_threshold, 4),
                              "method": hot.method}
    try:
        water_a = water_shares(manifest_a).reindex(t["tile_id"]).to_numpy()
        water_b = water_shares(manifest_b).reindex(t["tile_id"]).to_numpy()
    except (RasterError, KeyError) as err:  # no NIR, or manifests without scene URLs
        result["water"] = {"note": f"water reference unavailable: {err}"}
        return result
    t["water_share_a"], t["water_share_b"] = water_a, water_b
    scored = both.to_numpy() & ~np.isnan(water_a) & ~np.isnan(water_b)
    t["water_changed"] = np.abs(water_b - water_a) >= WATER_CHANGE
    result["water"] = {
        "method": "NDWI > 0 and NIR below the scene's Otsu threshold",
        "change_at_least": WATER_CHANGE,
        "share_a": round(float(np.nanmean(water_a)), 4),
        "share_b": round(float(np.nanmean(water_b)), 4),
        **embedding.agreement(t.loc[scored, "hotspot"].to_numpy(),
                              t.loc[scored, "water_changed"].to_numpy()),
    }
    return result


def _change_test(change: Change, manifest_a: pd.DataFrame, manifest_b: pd.DataFrame,
                 feats_a: pd.DataFrame, feats_b: pd.DataFrame, fdr: float,
                 spark: SparkSession | None = None) -> dict[str, Any]:
    """Each tile tested against a no-change null: year B normalised onto year A per scene
    pair (IR-MAD), tile statistics, Benjamini-Hochberg at ``fdr``; adds ``p_no_change`` and
    ``significant`` to the tiles."""
    t = change.tiles
    a, b = (m.set_index("tile_id").reindex(t["tile_id"]) for m in (manifest_a, manifest_b))
    if "scene_url" not in a or "scene_url" not in b:
        return {"note": "no scenes in the manifests (chips only): nothing to test"}
    raw = [f[list(normalise.RAW_STATISTICS)].to_numpy(float) for f in (feats_a, feats_b)]
    stats_a = normalise.normalised_statistics(raw[0])
    stats_b = np.full_like(stats_a, np.nan)
    scenes = pd.DataFrame({"a": a["scene_url"].to_numpy(), "b": b["scene_url"].to_numpy()})
    groups = {(str(scene_a), str(scene_b)): rows.index
              for (scene_a, scene_b), rows in scenes.dropna().groupby(["a", "b"])
              if np.isfinite(raw[1][rows.index]).any()}  # none: a scene without NIR
    try:
        fitted = normalise.normalise_pairs(list(groups), spark)
    except RasterError as err:  # scenes that do not overlap, or differ in bands
        return {"note": f"no-change test unavailable: {err}"}
    for pair, index in groups.items():
        stats_b[index] = normalise.normalised_statistics(raw[1][index], fitted[pair])
    fits = [{"scene_a": a, "scene_b": b, **fit.as_dict()} for (a, b), fit in fitted.items()]
    both = np.isfinite(stats_a).all(axis=1) & np.isfinite(stats_b).all(axis=1)
    if both.sum() < significance.MIN_TILES:
        return {"tiles": int(both.sum()), "note": "no-change test not run: it needs at least "
                f"{significance.MIN_TILES} tiles with 4-band (NIR) imagery in both years"}
    test = significance.significant_change(stats_a[both], stats_b[both], fdr=fdr)
    t["p_no_change"], t["change_score"] = np.nan, np.nan
    t.loc[both, "p_no_change"] = test.p_values
    t.loc[both, "change_score"] = test.scores
    t["significant"] = False
    t.loc[both, "significant"] = test.flagged
    result: dict[str, Any] = {"tiles": int(both.sum()), **test.as_dict(),
                              "method": test.method, "normalisation": fits}
    if "water_changed" in t:
        scored = (both & t["water_share_a"].notna().to_numpy()
                  & t["water_share_b"].notna().to_numpy())
        result["water"] = embedding.agreement(t.loc[scored, "significant"].to_numpy(),
                                              t.loc[scored, "water_changed"].to_numpy())
    return result


# --- rendering ------------------------------------------------------------------------


def _render(change: Change, summary: dict[str, Any]) -> dict[str, bytes]:
    """Every file of the report, in memory."""
    t = change.tiles.set_index("tile_id")
    files: dict[str, bytes] = {}
    ref_name = f"{change.reference.year} {change.reference.source}"
    a, b = change.reference.year, change.year_b.year
    change_state = pd.Series("no change", index=t.index)
    change_state[t["changed"]] = "other change"
    change_state[t["newly_developed"]] = "newly developed"
    change_state[t["ref_group"].notna() & t["b_group"].isna()] = "uncertain"
    change_state[t["ref_group"].isna()] = None
    multi = len(change.layouts) > 1
    panels: list[tuple[str, np.ndarray]] = []
    for layout in change.layouts:
        suffix = f"_{layout.crs.replace(':', '').lower()}" if multi else ""
        layers = [("reference", t["ref_group"], maps.GROUP_PALETTE, f"{ref_name} groups")]
        if change.year_a is not None and change.year_a is not change.reference:
            layers.append((f"groups_{a}", t["a_group"], maps.GROUP_PALETTE,
                           f"{a} predicted groups"))
        layers += [
            (f"groups_{b}", t["b_group"], maps.GROUP_PALETTE, f"{b} predicted groups"),
            (f"classes_{b}", t["b_class"].where(t["b_group"].notna()), maps.CLASS_PALETTE,
             f"{b} predicted classes"),
            ("change", change_state, maps.CHANGE_PALETTE, f"change {ref_name} -> {b}"),
        ]
        for name, values, palette, description in layers:
            raster = maps.categorical(layout, values, palette)
            files[f"{name}{suffix}.tif"] = maps.cog_bytes(raster, layout, palette, description)
            files[f"{name}{suffix}.png"] = maps.map_figure(
                raster, palette, f"{change.county}: {description}", layout.tile_size, layout.crs)
            if name.startswith("groups_") or name == "reference":
                panels.append((f"{description} ({layout.crs})" if multi else description,
                               raster))
    files["comparison.png"] = maps.side_by_side(
        panels, maps.GROUP_PALETTE, f"{change.county}: {ref_name} | predictions {a} | {b}",
        tile_m=change.layouts[0].tile_size)
    if summary["counts"]:
        files["shares.png"] = maps.shares_chart(summary["counts"],
                                                f"{change.county}: tiles per group")
    test = summary.get("change_test", {})
    if "flagged" in test:
        scored = t["change_score"].notna()
        null = test["nulls"][0]
        files["no_change_test.png"] = maps.null_chart([(
            f"{change.county} {a} -> {b}: tested against no change",
            t.loc[scored, "change_score"].to_numpy(), t.loc[scored, "significant"].to_numpy(),
            null["centre"], null["scale"], test["fdr"])])
    if summary["transitions"]:
        files["transitions.png"] = maps.transitions_chart(
            summary["transitions"], f"{change.county}: {a} group -> {b} group")
    rows = change.tiles
    changed = rows[rows["changed"] | rows.get("hotspot", False) | rows.get("significant", False)]
    props = [c for c in ("ref_group", "a_group", "b_group", "b_class", "b_confidence",
                         "newly_developed", "embedding_distance", "embedding_neighbourhood",
                         "hotspot", "p_no_change", "significant", "water_share_a",
                         "water_share_b",
                         *[f"b_p_{c}" for c in labels.CLASSES])
             if c in changed]
    files["changes.geojson"] = json.dumps(maps.tiles_geojson(changed, props), indent=1).encode()
    buf = io.BytesIO()
    change.tiles.to_parquet(buf, index=False)
    files["tiles.parquet"] = buf.getvalue()
    files["report.md"] = _markdown(change, summary, sorted(files)).encode()
    return files


def _markdown(change: Change, s: dict[str, Any], files: list[str]) -> str:
    a, b = s["year_a"], s["year_b"]
    model = s["model"]
    part = model.get("county_part")
    where = {"test": "one of the model's test counties (held out)",
             "train": "one of the model's training counties: not a held-out figure",
             "validation": "the model's validation county, which chose it: not a held-out "
                           "figure",
             "none": "not in the model's split"}.get(str(part), f"in the split's {part} parts")
    lines = [f"> **Caution:** {s['caveat']}", ""] if "caveat" in s else []
    lines += [
        f"# Land-use change in {s['county']}, {a} to {b}",
        "",
        f"Reference: {s['reference_choice']}. Predictions {b} by `{s['model_b']}`"
        + (f"; predictions {a} by `{s['model_a']}`" if s["model_a"] else "") + ".",
        f"Predictions with a group probability below {s['threshold']} are uncertain"
        + ("; predicted groups were smoothed (3×3 plurality)." if s["smoothed"] else "."),
        "",
        f"**{_with_error(s, 'newly_developed', 'tiles newly developed')}** (Undeveloped or "
        f"Cultivated in {a}, Developed in {b}) of {s['compared']} compared ({s['tiles']} tiles "
        f"in both years, {s['uncertain']} uncertain); "
        f"{_with_error(s, 'changed', 'tiles changed group')}.",
        "",
    ]
    if "accuracy" in model:
        lines += [f"Model `{model['model_id']}` on its held-out test counties "
                  f"({', '.join(model['test_counties'])}, {model['test_tiles']} tiles): "
                  f"accuracy {model['accuracy']:.3f} ({model.get('measured_on', 'classes')}), "
                  f"{model['group_accuracy']:.3f} (groups). This county is {where}.", ""]
    else:
        lines += [f"Model: {model.get('note')}.", ""]
    e = s["expected_from_model_error"]
    if "newly_developed" in e:
        lines += [f"Expected from model error alone: the model's group confusion on its test "
                  f"counties ({e['from']}) applied to each compared tile's {a} group "
                  f"({e['newly_developed']['interval']:.0%} intervals include the test set's "
                  "size).", ""]
    if s.get("missing_classes"):
        lines += [f"The model cannot predict {', '.join(s['missing_classes'])} (none in its "
                  "training): such land is mapped as another class.", ""]
    lines += [
        "![reference | year A | year B](comparison.png)",
        "",
        "## Tiles per group",
        "",
        _table(count_table(change).reset_index()),
        "",
        "![tiles per group](shares.png)",
        "",
        f"## Transitions ({a} rows, {b} columns)",
        "",
        _table(transition_matrix(change).rename_axis(f"{a} \\ {b}").reset_index()),
        "",
        "![transitions](transitions.png)",
    ]
    if s["accuracy"]:
        lines += ["", "## Agreement with this county's NLCD labels", "",
                  f"This county is {where}.", "",
                  "| year | tiles | classes | groups |", "| --- | --- | --- | --- |"]
        lines += [f"| {y} | {r['tiles']} | {r['accuracy']:.3f} | {r['group_accuracy']:.3f} |"
                  for y, r in sorted(s["accuracy"].items())]
    if "planted_change" in s:
        p = s["planted_change"]
        lines += ["", f"## Planted change (synthetic truth; this county is {where})", "",
                  f"Newly developed against the planted truth: precision {p['precision']:.3f}, "
                  f"recall {p['recall']:.3f}, IoU {p['iou']:.3f} ({p['both']} of "
                  f"{p['reference']} planted tiles found, {p['detected']} detected)."]
    e = s.get("embedding_change")
    if e and "hotspots" in e:
        lines += ["", "## Change without labels (embedding distance)", "",
                  f"{e['hotspots']} of {e['tiles']} tiles ({e['share_flagged']:.1%}) are "
                  f"hotspots: {e['method']}, on the {e['backbone']} feature distance (each "
                  "vintage standardised). The bars come from this county's own imagery (how "
                  "different neighbouring tiles look within one year), so a pair of years "
                  "where little changed gets few hotspots."]
        w = e.get("water", {})
        if "precision" in w:
            lines += ["", f"Against water change from the imagery ({w['method']}; share "
                      f"changed by at least {w['change_at_least']}; water {w['share_a']:.1%} "
                      f"of the county in {a}, {w['share_b']:.1%} in {b}): precision "
                      f"{w['precision']:.3f}, recall {w['recall']:.3f}, IoU {w['iou']:.3f} "
                      f"({w['reference']} water-change tiles, base rate {w['base_rate']:.3f})."]
        elif w:
            lines += ["", w["note"]]
    lines += _test_lines(s.get("change_test"))
    lines += ["", "## Files", ""] + [f"- [{f}]({f})" for f in files]
    text = "\n".join(lines) + "\n"
    return text + "\n" + review.markdown(s["review"]) if "review" in s else text


def _test_lines(c: dict[str, Any] | None) -> list[str]:
    """The no-change test's section of the report."""
    if not c:
        return []
    lines = ["", "## Tested against no change (false-discovery rate)", ""]
    if "flagged" not in c:
        return [*lines, c["note"]]
    pairs = c["normalisation"]
    fits = "; ".join(f"{f['method']}, gains {f['gain']}" for f in pairs[:3])
    if len(pairs) > 3:  # a county has hundreds of scene pairs: summary.json lists them all
        fits += f"; and {len(pairs) - 3} more scene pairs"
    lines += [f"{c['flagged']} of {c['tiles']} tiles ({c['share_flagged']:.1%}) changed "
              f"significantly at FDR {c['fdr']:g}: about {c['expected_false']:.1f} of them are "
              f"expected to be false discoveries. Year B was first normalised onto year A per "
              f"scene pair ({fits}); then {c['method']}. Each tile's p-value of no change is "
              "in changes.geojson (`p_no_change`).",
              "",
              "No change here means no change in appearance beyond what differs between the two "
              "acquisitions as a whole. A field harvested or tilled in one year and green in the "
              "other has changed in appearance and is flagged; so is real land-use change. The "
              "map's hotspots (above) are a separate, quantile-based rule."]
    w = c.get("water", {})
    if "precision" in w:
        lines += ["", f"Against water change from the imagery: precision {w['precision']:.3f}, "
                  f"recall {w['recall']:.3f}, IoU {w['iou']:.3f} ({w['reference']} water-change "
                  "tiles). Water change is a partial reference: harvested, tilled or built-over "
                  "fields count as false against it but may be real."]
    return lines


def _with_error(s: dict[str, Any], key: str, what: str) -> str:
    e = s["expected_from_model_error"].get(key)
    return expected.describe(s[key], e, what) if e else f"{s[key]} {what}"


def _table(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    rows = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for record in frame.itertuples(index=False):
        rows.append("| " + " | ".join("" if v is None or (isinstance(v, float) and np.isnan(v))
                                      else f"{v:.3f}" if isinstance(v, float) else str(v)
                                      for v in record) + " |")
    return "\n".join(rows)
