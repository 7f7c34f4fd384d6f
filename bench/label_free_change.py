"""Label-free change on real imagery: the old rule, today's rule and the no-change test.

The bundled real NAIP quarter-quad of Stutsman County, North Dakota (2010, 2016, 2020) is
tiled (224 m tiles, no labels). The reference is water change read from the same imagery
(NDWI and NIR, landuse.change.water): a tile whose water share changed by at least 0.15. It
cannot see harvested, tilled or built-over fields, so part of what counts as "false" against
it is real change on the ground. Rules compared:
  old    robust z-score of the SqueezeNet feature distance > 1 (about one tile in six)
  today  embedding.select_hotspots: neighbourhood-null quantiles 0.4 / 0.75 (the rule before
         this one, tuned on 2010 -> 2016 and 2016 -> 2020)
  test   significance.significant_change at --fdr: year B normalised onto year A per scene pair
         (IR-MAD), per-tile pixel statistics, a cross-year linear map fitted on the likely
         unchanged tiles, Mahalanobis distance, the no-change null, Benjamini-Hochberg
Pairs: 2010 -> 2016 (much water change) and 2016 -> 2020 (little) may be tuned on;
2010 -> 2020 is printed as a check only, and so is every consecutive pair of the ten vintages
in ../shared/data/naip (2009-2020) where that folder exists (--shared; never tuned on).
Then a synthetic null (the 2016 scene against a copy
of itself with per-band gain, offset and gamma changed, nothing else) and a planted check on
2016 -> 2020 (12 scattered tiles' year-B data replaced by a place at least 5 tiles away).
Also prints the best IoU any threshold on each score could reach (an oracle bound).

Run:  .venv/bin/python bench/label_free_change.py [--fdr 0.05] [--figure out.png]
Ends with ``ratio=<today's flagged share / the test's flagged share on 2016 -> 2020>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import rasterio  # noqa: E402

from landuse import storage  # noqa: E402
from landuse.change import embedding, features, maps, normalise, significance  # noqa: E402
from landuse.change.run import WATER_CHANGE  # noqa: E402
from landuse.change.water import water_shares  # noqa: E402
from landuse.counties import County  # noqa: E402
from landuse.tiling import build_county, manifest_url  # noqa: E402

COUNTY = "stutsman-nd"
YEARS = (2010, 2016, 2020)
PAIRS = ((2010, 2016), (2016, 2020), (2010, 2020))
TUNED = {(2010, 2016), (2016, 2020)}
PLANTED = 12
# The synthetic null's distortion of the 2016 scene, band by band (R, G, B, NIR).
GAIN, OFFSET, GAMMA = (1.15, 0.9, 1.1, 0.85), (-8.0, 12.0, 5.0, 10.0), (0.9, 1.1, 0.95, 1.05)


def distort(src_url: str, dst: str) -> None:
    """A copy of a scene with each band's gain, offset and gamma changed; nothing moved."""
    with rasterio.open(src_url) as src:
        profile, pixels = src.profile, src.read().astype(np.float64)
    valid = pixels.any(axis=0)
    for k in range(pixels.shape[0]):
        band = 255.0 * (pixels[k] / 255.0) ** GAMMA[k] * GAIN[k] + OFFSET[k]
        pixels[k] = np.where(valid, np.clip(band, 1, 255), 0)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(pixels.round().astype(np.uint8))


def line(name: str, mask: np.ndarray, reference: np.ndarray | None, note: str = "") -> dict:
    """One rule's figures (flagged share; against the reference where there is one)."""
    n = int(mask.size)
    if reference is None:
        print(f"  {name:5s} flagged {int(mask.sum()):3d}/{n} ({mask.mean():6.1%})"
              f"{'  ' + note if note else ''}")
        return {"detected": int(mask.sum()), "tiles": n}
    a = embedding.agreement(mask, reference)
    print(f"  {name:5s} flagged {a['detected']:3d}/{n} ({a['detected'] / n:6.1%})  precision "
          f"{a['precision']:.3f}  recall {a['recall']:.3f}  IoU {a['iou']:.3f}"
          f"{'  ' + note if note else ''}")
    return a


def contact_sheet(top: pd.DataFrame, rows: dict[int, pd.DataFrame]) -> np.ndarray:
    """The ``top`` tiles in 2016 (left) and 2020 (right), two pairs a row, as RGB."""
    from landuse.tiling import chip_rgb, read_tile

    pairs = []
    for tile in top.itertuples():
        images = []
        for year in (2016, 2020):
            row = rows[year].set_index("tile_id").loc[tile.tile_id]
            with rasterio.open(row.scene_url) as src:
                images.append(chip_rgb(read_tile(src, row.scene_url, (row.minx, row.miny,
                                                                      row.maxx, row.maxy),
                                                 ["red", "green", "blue"], 160)))
        gap = np.full((160, 4, 3), 255, np.uint8)
        pairs.append(np.hstack([images[0], gap, images[1]]))
    gap_v = np.full((pairs[0].shape[0], 16, 3), 255, np.uint8)
    rows_of = [np.hstack([pairs[i], gap_v, pairs[i + 1]]) for i in range(0, len(pairs) - 1, 2)]
    spacer = np.full((6, rows_of[0].shape[1], 3), 255, np.uint8)
    return np.vstack([part for r in rows_of for part in (r, spacer)][:-1])


def best_iou(score: np.ndarray, reference: np.ndarray) -> float:
    """The best IoU any threshold on ``score`` reaches against ``reference`` (an oracle)."""
    order = np.argsort(-score)
    hits = np.cumsum(reference[order])
    flagged = np.arange(1, len(score) + 1)
    return float((hits / (flagged + reference.sum() - hits)).max())


def rules(fa, fb, sa, sb, bounds, crs, fdr):
    distances, today = embedding.change_hotspots(fa, fb, bounds, crs)
    test = significance.significant_change(sa, sb, fdr=fdr)
    return distances, embedding.robust_z(distances) > embedding.HOTSPOT_Z, today, test


def check_shared(county: County, folder: Path, fdr: float) -> None:
    """Today's rule and the test on every consecutive pair of the vintages in ``folder``
    (the same quarter-quad): checks only, none of these pairs was tuned on."""
    years = sorted({int(p.name.rsplit("_", 1)[1][:4]) for p in folder.glob("m_*.tif")})
    with tempfile.TemporaryDirectory(prefix="bench-label-free-shared-") as root:
        build_county(county.model_copy(update={"naip": str(folder)}), years, root, nlcd="")
        rows = {y: storage.read_parquet(manifest_url(root, COUNTY, y)).to_pandas()
                .set_index("tile_id") for y in years}
        print(f"\nchecks on {len(years)} further vintages ({folder}; never tuned on); "
              "flagged share, and precision / recall / IoU against water change:")
        print(f"  {'pair':12s} {'water tiles':>11s}  {'today':>30s}  {'test':>30s}")
        for year_a, year_b in itertools.pairwise(years):
            ids = sorted(set(rows[year_a].index) & set(rows[year_b].index))
            a, b = rows[year_a].loc[ids].reset_index(), rows[year_b].loc[ids].reset_index()
            feats = {y: features.county_year_features(root, COUNTY, y).loc[ids]
                     for y in (year_a, year_b)}
            norm = normalise.normalise_pair(a["scene_url"][0], b["scene_url"][0])
            raw = {y: feats[y][list(normalise.RAW_STATISTICS)].to_numpy(float)
                   for y in (year_a, year_b)}
            _, today = embedding.change_hotspots(
                *(np.stack(feats[y]["embedding"].to_numpy()) for y in (year_a, year_b)),
                a[["minx", "miny", "maxx", "maxy"]].to_numpy(float), list(a["crs"]))
            test = significance.significant_change(
                normalise.normalised_statistics(raw[year_a]),
                normalise.normalised_statistics(raw[year_b], norm), fdr=fdr)
            wa, wb = (water_shares(r).reindex(ids).to_numpy() for r in (a, b))
            reference = np.abs(wb - wa) >= WATER_CHANGE
            cells = []
            for mask in (today.mask, test.flagged):
                g = embedding.agreement(mask, reference)
                cells.append(f"{mask.mean():5.1%} {g['precision']:.2f}/{g['recall']:.2f}/"
                             f"{g['iou']:.2f}")
            print(f"  {year_a}->{year_b}  {int(reference.sum()):5d} "
                  f"({np.nanmean(wa):4.0%}->{np.nanmean(wb):4.0%})  {cells[0]:>30s}  "
                  f"{cells[1]:>30s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=PROJECT / "sample")
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--shared", type=Path,
                        default=PROJECT.parent / "shared" / "data" / "naip",
                        help="folder of further vintages of the same quarter-quad (checks)")
    parser.add_argument("--figure", type=Path, default=None,
                        help="write the tuned pairs' score histograms, nulls and bars here (PNG)")
    args = parser.parse_args()
    doc = json.loads((args.sample / "counties.json").read_text())
    [entry] = [c for c in doc["counties"] if c["name"] == COUNTY]
    county = County(**{**entry, "naip": str(args.sample / entry["naip"])})
    with tempfile.TemporaryDirectory(prefix="bench-label-free-") as root:
        build_county(county, YEARS, root, nlcd="")
        manifests = {y: storage.read_parquet(manifest_url(root, COUNTY, y)).to_pandas()
                     .set_index("tile_id") for y in YEARS}
        ids = sorted(set.intersection(*(set(m.index) for m in manifests.values())))
        rows = {y: manifests[y].loc[ids].reset_index() for y in YEARS}
        bounds = rows[2010][["minx", "miny", "maxx", "maxy"]].to_numpy(float)
        crs = list(rows[2010]["crs"])
        computed = {y: features.county_year_features(root, COUNTY, y).loc[ids] for y in YEARS}
        feats = {y: np.stack(computed[y]["embedding"].to_numpy()) for y in YEARS}
        raw = {y: computed[y][list(normalise.RAW_STATISTICS)].to_numpy(float) for y in YEARS}
        water = {y: water_shares(rows[y]).reindex(ids).to_numpy() for y in YEARS}
        own = {y: normalise.normalised_statistics(raw[y]) for y in YEARS}
        print(f"{COUNTY}: {len(ids)} tiles of 224 m; water reference: |water share change| >= "
              f"{WATER_CHANGE} (it cannot see harvested, tilled or built-over fields); "
              f"test at FDR {args.fdr}")
        results, panels = {}, []
        for year_a, year_b in PAIRS:
            scene_a, scene_b = rows[year_a]["scene_url"][0], rows[year_b]["scene_url"][0]
            norm = normalise.normalise_pair(scene_a, scene_b)
            sb = normalise.normalised_statistics(raw[year_b], norm)
            reference = np.abs(water[year_b] - water[year_a]) >= WATER_CHANGE
            distances, old, today, test = rules(feats[year_a], feats[year_b], own[year_a], sb,
                                                bounds, crs, args.fdr)
            tag = "tuned on" if (year_a, year_b) in TUNED else "check only, never tuned on"
            print(f"\n{year_a} -> {year_b} ({tag}): water {np.nanmean(water[year_a]):.1%} -> "
                  f"{np.nanmean(water[year_b]):.1%}, {reference.sum()} water-change tiles (base "
                  f"rate {reference.mean():.3f}); normalisation {norm.method}, gains "
                  f"{[round(m.gain, 2) for m in norm.bands]}")
            results[year_a, year_b] = {
                "old": line("old", old, reference),
                "today": line("today", today.mask, reference),
                "test": line("test", test.flagged, reference,
                             f"expected false {test.expected_false:.1f}; "
                             + ", ".join(f"{n.name} null {n.kind} {n.centre:+.2f}/{n.scale:.2f}"
                                         for n in test.nulls)),
            }
            if (year_a, year_b) == (2016, 2020):
                top = rows[2016].loc[np.argsort(test.p_values)[:8]]
            if (year_a, year_b) in TUNED:
                null = test.nulls[0]
                panels.append((f"Stutsman {year_a} -> {year_b}: {test.flagged.sum()} of "
                               f"{len(ids)} flagged", test.scores, test.flagged, null.centre,
                               null.scale, args.fdr))
            print(f"  oracle best IoU over all thresholds: feature distance "
                  f"{best_iou(distances, reference):.3f}, test distance "
                  f"{best_iou(test.distances, reference):.3f}, |NDWI change| "
                  f"{best_iou(np.abs(sb[:, 9] - own[year_a][:, 9]), reference):.3f}")

        # synthetic null: the 2016 scene against a distorted copy of itself, nothing changed
        scene = rows[2016]["scene_url"][0]
        copy = str(Path(root) / "distorted_2016.tif")
        distort(scene, copy)
        fake = rows[2016].assign(scene_url=copy)
        norm = normalise.normalise_pair(scene, copy)
        model, spec = features.backbone_model()
        copied = features.scene_features(fake, model, spec).set_index("tile_id").loc[ids]
        fb = np.stack(copied["embedding"].to_numpy())
        sb = normalise.normalised_statistics(
            copied[list(normalise.RAW_STATISTICS)].to_numpy(float), norm)
        _, old, today, test = rules(feats[2016], fb, own[2016], sb, bounds, crs, args.fdr)
        print(f"\nsynthetic null: 2016 against itself with gain {GAIN}, offset {OFFSET}, "
              f"gamma {GAMMA} per band and no change; IR-MAD gains "
              f"{[round(m.gain, 2) for m in norm.bands]}")
        null = {"old": line("old", old, None), "today": line("today", today.mask, None),
                "test": line("test", test.flagged, None, f"target at most {2 * args.fdr:.0%}")}

        # lone planted changes on 2016 -> 2020: a place >= 5 tiles away
        rng = np.random.default_rng(0)
        cells = np.rint(bounds[:, :2] / (bounds[:, 2:] - bounds[:, :2]))
        norm = normalise.normalise_pair(rows[2016]["scene_url"][0], rows[2020]["scene_url"][0])
        sb = normalise.normalised_statistics(raw[2020], norm)
        fb, planted_sb = feats[2020].copy(), sb.copy()
        planted: list[int] = []
        for i in rng.permutation(len(ids)):
            if len(planted) == PLANTED:
                break
            if all(np.abs(cells[i] - cells[j]).max() > 2 for j in planted):  # scattered, lone
                far = rng.choice(np.flatnonzero(np.abs(cells - cells[i]).max(axis=1) >= 5))
                fb[i], planted_sb[i] = feats[2020][far], sb[far]
                planted.append(i)
        truth = np.zeros(len(ids), bool)
        truth[planted] = True
        _, old, today, test = rules(feats[2016], fb, own[2016], planted_sb, bounds, crs,
                                    args.fdr)
        print(f"\n2016 -> 2020 with {PLANTED} lone planted changes (year B replaced by a place "
              ">= 5 tiles away):")
        plant = {"old": line("old", old, truth), "today": line("today", today.mask, truth),
                 "test": line("test", test.flagged, truth)}

    if args.figure:
        args.figure.write_bytes(maps.null_chart(panels))
        sheet = args.figure.with_name(f"{args.figure.stem}-tiles.png")
        Image.fromarray(contact_sheet(top, rows)).save(sheet)
        print(f"\nfigures: {args.figure}, {sheet} (the 8 most significant 2016 -> 2020 "
              "tiles, 2016 left, 2020 right)")
    if args.shared.is_dir():
        check_shared(county, args.shared, args.fdr)
    base, quiet = results[2010, 2016], results[2016, 2020]
    share = {k: v["detected"] / v["tiles"] for k, v in quiet.items()}
    print(f"\nsummary: 2010->2016 IoU old {base['old']['iou']:.3f} today "
          f"{base['today']['iou']:.3f} test {base['test']['iou']:.3f} (P "
          f"{base['test']['precision']:.3f} R {base['test']['recall']:.3f}); 2016->2020 flagged "
          f"old {share['old']:.1%} today {share['today']:.1%} test {share['test']:.1%} (water "
          f"base rate {quiet['test']['base_rate']:.1%}, precision today "
          f"{quiet['today']['precision']:.3f} test {quiet['test']['precision']:.3f}); synthetic "
          f"null flagged today {null['today']['detected']} test {null['test']['detected']} of "
          f"{null['test']['tiles']}; lone planted recall today {plant['today']['recall']:.2f} "
          f"test {plant['test']['recall']:.2f}")
    print(f"ratio={share['today'] / max(share['test'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
