"""Change without labels on real imagery: the bundled North Dakota quarter-quad, 2010 and
2016, checked against an independent reference read from the same imagery (open water from
NDWI and NIR). Prairie-pothole water levels differ a lot between the two summers, so water
change is the change we can check; the embedding distance must find it well above chance."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from landuse import storage
from landuse.change import embedding, features
from landuse.change.detect import check_grids
from landuse.change.run import WATER_CHANGE
from landuse.change.water import water_shares
from landuse.counties import County
from landuse.tiling import build_county, manifest_url

SAMPLE = Path(__file__).resolve().parents[3] / "sample"
COUNTY = "stutsman-nd"


@pytest.fixture(scope="module")
def stutsman(tmp_path_factory):
    """The bundled real scenes tiled (no NLCD offline) for 2010 and 2016."""
    doc = json.loads((SAMPLE / "counties.json").read_text())
    [entry] = [c for c in doc["counties"] if c["name"] == COUNTY]
    county = County(**{**entry, "naip": str(SAMPLE / "naip")})
    root = str(tmp_path_factory.mktemp("stutsman"))
    results = build_county(county, [2010, 2016], root, nlcd="")
    assert [r.year for r in results] == [2010, 2016]
    return SimpleNamespace(root=root, manifests={
        y: storage.read_parquet(manifest_url(root, COUNTY, y)).to_pandas() for y in (2010, 2016)})


def test_embedding_change_finds_water_change(stutsman):
    a, b = stutsman.manifests[2010], stutsman.manifests[2016]
    assert a["label"].isna().all()  # unlabelled: this is the label-free route
    both = check_grids(COUNTY, a, b, 2010, 2016)
    assert len(both) >= 200

    ids = both["tile_id"]
    feats = [np.stack(features.county_year_features(stutsman.root, COUNTY, year)
                      .loc[ids, "embedding"].to_numpy()) for year in (2010, 2016)]
    _, hot = embedding.change_hotspots(
        *feats,
        both[["minx", "miny", "maxx", "maxy"]].to_numpy(float), list(both["crs"]))
    hotspot = hot.mask  # the rule change reports use

    water_a = water_shares(a).reindex(both["tile_id"]).to_numpy()
    water_b = water_shares(b).reindex(both["tile_id"]).to_numpy()
    scored = ~np.isnan(water_a) & ~np.isnan(water_b)
    assert scored.mean() > 0.9
    water_changed = np.abs(water_b - water_a) >= WATER_CHANGE
    result = embedding.agreement(hotspot[scored], water_changed[scored])
    print(f"\nembedding hotspots vs water change ({result['tiles']} tiles): "
          f"precision {result['precision']:.3f}, recall {result['recall']:.3f}, "
          f"IoU {result['iou']:.3f}, base rate {result['base_rate']:.3f}; "
          f"{result['detected']} hotspots, {result['reference']} water-change tiles; "
          f"water {np.nanmean(water_a):.1%} in 2010, {np.nanmean(water_b):.1%} in 2016")
    assert 0.05 < result["base_rate"] < 0.5  # the check is informative
    assert result["precision"] >= 0.35
    assert result["recall"] >= 0.3
    assert result["iou"] >= 0.2
    assert result["precision"] > 1.5 * result["base_rate"]  # well above chance
