"""Label-free change on real imagery: the old hotspot rule against the adaptive one.

The bundled real NAIP quarter-quad of Stutsman County, North Dakota (2010, 2016, 2020) is
tiled (224 m tiles, no labels), every tile is embedded with SqueezeNet (shipped ImageNet
weights) and the change distance of each tile is the cosine distance of its per-vintage
standardised features (landuse.change.embedding). The reference is water change read from
the same imagery (NDWI and NIR, landuse.change.water): a tile whose water share changed by at
least 0.15. Rules compared on the same distances:
  old   robust z-score of the distance > 1 (a fixed share of about one tile in six)
  gmm   2-component Gaussian mixture on log distance, tiles of the upper component
        (a distance-only threshold, shown for comparison)
  new   embedding.select_hotspots: bars from the county's own null model, the distances
        between neighbouring tiles within a year (neighbourhood mean above its 40 % quantile,
        or own distance above its 75 % quantile)
Pairs: 2010 -> 2016 (much water change: precision, recall, IoU) and 2016 -> 2020 (little:
the share flagged against the base rate); both were used to tune the new rule. 2010 -> 2020
is printed as a further check. Then a planted check on 2016 -> 2020: the 2020 features of
12 scattered tiles are replaced by those of a place at least 5 tiles away (a different
place), and the recall of these lone planted changes is printed.

Run:  .venv/bin/python bench/label_free_change.py [--cache /tmp/label_free_cache]
Ends with ``summary: ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "include"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sklearn.mixture import GaussianMixture  # noqa: E402

from landuse import storage  # noqa: E402
from landuse.change import embedding  # noqa: E402
from landuse.change.run import WATER_CHANGE  # noqa: E402
from landuse.change.water import water_shares  # noqa: E402
from landuse.counties import County  # noqa: E402
from landuse.tiling import build_county, manifest_url  # noqa: E402

COUNTY = "stutsman-nd"
YEARS = (2010, 2016, 2020)
PAIRS = ((2010, 2016), (2016, 2020), (2010, 2020))
PLANTED = 12


def load(sample: Path, cache: Path | None) -> dict[str, np.ndarray]:
    """Features, water shares and bounds of the tiles every year has (cached if asked)."""
    cached = cache / "bench_label_free.npz" if cache else None
    if cached and cached.exists():
        return dict(np.load(cached, allow_pickle=False))
    doc = json.loads((sample / "counties.json").read_text())
    [entry] = [c for c in doc["counties"] if c["name"] == COUNTY]
    county = County(**{**entry, "naip": str(sample / entry["naip"])})
    with tempfile.TemporaryDirectory(prefix="bench-label-free-") as root:
        build_county(county, YEARS, root, nlcd="")
        manifests = {y: storage.read_parquet(manifest_url(root, COUNTY, y)).to_pandas()
                     .set_index("tile_id") for y in YEARS}
        ids = sorted(set.intersection(*(set(m.index) for m in manifests.values())))
        urls = [url for y in YEARS for url in manifests[y].loc[ids, "image_url"]]
        features = embedding.embed(urls)  # one backbone for every year
        out = {"tile_id": np.array(ids),
               "bounds": manifests[YEARS[0]].loc[ids, ["minx", "miny", "maxx", "maxy"]]
               .to_numpy(float),
               "crs": manifests[YEARS[0]].loc[ids, "crs"].to_numpy(str)}
        for k, y in enumerate(YEARS):
            out[f"features_{y}"] = features[k * len(ids):(k + 1) * len(ids)]
            out[f"water_{y}"] = water_shares(manifests[y].reset_index()).reindex(ids).to_numpy()
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(cached)
    return out


def gmm_upper(distances: np.ndarray) -> np.ndarray:
    """Tiles of the upper component of a 2-component Gaussian mixture on log distance."""
    x = np.log(np.maximum(distances, 1e-6))[:, None]
    gmm = GaussianMixture(2, random_state=0).fit(x)
    return np.asarray(gmm.predict(x) == int(np.argmax(gmm.means_[:, 0])))


def line(name: str, mask: np.ndarray, reference: np.ndarray, note: str = "") -> dict:
    a = embedding.agreement(mask, reference)
    print(f"  {name:4s} flagged {a['detected']:3d}/{a['tiles']} ({a['detected'] / a['tiles']:6.1%})"
          f"  precision {a['precision']:.3f}  recall {a['recall']:.3f}  IoU {a['iou']:.3f}"
          f"{'  ' + note if note else ''}")
    return a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=PROJECT / "sample")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder to keep features and water shares between runs")
    args = parser.parse_args()
    data = load(args.sample, args.cache)
    pairs = embedding.adjacent_pairs(data["bounds"], list(data["crs"]))
    print(f"{COUNTY}: {len(data['tile_id'])} tiles of 224 m, {len(pairs)} neighbouring pairs; "
          f"water reference: |water share change| >= {WATER_CHANGE}")
    results: dict[tuple[int, int], dict[str, dict]] = {}
    for year_a, year_b in PAIRS:
        fa, fb = data[f"features_{year_a}"], data[f"features_{year_b}"]
        wa, wb = data[f"water_{year_a}"], data[f"water_{year_b}"]
        scored = ~np.isnan(wa) & ~np.isnan(wb)
        reference = (np.abs(wb - wa) >= WATER_CHANGE)[scored]
        distances, hot = embedding.change_hotspots(fa, fb, data["bounds"], list(data["crs"]))
        old = embedding.robust_z(distances) > embedding.HOTSPOT_Z
        print(f"\n{year_a} -> {year_b}: {scored.sum()} tiles scored, water {np.nanmean(wa):.1%} "
              f"-> {np.nanmean(wb):.1%}, {reference.sum()} water-change tiles "
              f"(base rate {reference.mean():.3f}); distance median {np.median(distances):.3f}")
        results[year_a, year_b] = {
            "old": line("old", old[scored], reference, f"robust z > {embedding.HOTSPOT_Z}"),
            "gmm": line("gmm", gmm_upper(distances)[scored], reference),
            "new": line("new", hot.mask[scored], reference,
                        f"bars {hot.threshold:.3f} / {hot.lone_threshold:.3f}"),
        }

    # lone planted changes: a 2020 tile replaced by a place at least 5 tiles away
    rng = np.random.default_rng(0)
    cells = np.rint(data["bounds"][:, :2] / (data["bounds"][:, 2:] - data["bounds"][:, :2]))
    fa, fb = data["features_2016"], data["features_2020"].copy()
    planted: list[int] = []
    for i in rng.permutation(len(fb)):
        if len(planted) == PLANTED:
            break
        if all(np.abs(cells[i] - cells[j]).max() > 2 for j in planted):  # scattered, lone
            far = np.flatnonzero(np.abs(cells - cells[i]).max(axis=1) >= 5)
            fb[i] = data["features_2020"][rng.choice(far)]
            planted.append(i)
    truth = np.zeros(len(fb), bool)
    truth[planted] = True
    distances, hot = embedding.change_hotspots(fa, fb, data["bounds"], list(data["crs"]))
    old = embedding.robust_z(distances) > embedding.HOTSPOT_Z
    print(f"\n2016 -> 2020 with {PLANTED} lone planted changes (2020 tile replaced by a "
          "place >= 5 tiles away):")
    planted_old = line("old", old, truth)
    planted_new = line("new", hot.mask, truth)

    base, quiet = results[2010, 2016], results[2016, 2020]
    print(f"\nsummary: 2010->2016 old P {base['old']['precision']:.3f} "
          f"R {base['old']['recall']:.3f} IoU {base['old']['iou']:.3f}, new P "
          f"{base['new']['precision']:.3f} R {base['new']['recall']:.3f} IoU "
          f"{base['new']['iou']:.3f}; 2016->2020 flagged old "
          f"{quiet['old']['detected'] / quiet['old']['tiles']:.1%} new "
          f"{quiet['new']['detected'] / quiet['new']['tiles']:.1%} (water base rate "
          f"{quiet['new']['base_rate']:.1%}); lone planted recall old "
          f"{planted_old['recall']:.2f} new {planted_new['recall']:.2f}")


if __name__ == "__main__":
    main()
