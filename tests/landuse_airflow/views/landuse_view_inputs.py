"""Inputs for the Land use view's tests: a synthetic county tiled for 2010 and 2016 with
'predictions' equal to its NLCD labels, under a local or an ``abfs://`` root."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from landuse import labels, storage

COUNTY = "synthetic-county-1"


def tile_and_predict(root: str, synthetic: Path, county_name: str = COUNTY) -> None:
    """Tile ``county_name`` for 2010 and 2016 under ``root`` and write predictions that
    equal the labels (so the change found is the labels' planted change)."""
    from landuse import counties
    from landuse.scoring.predict import PREDICTION_SCHEMA, to_table
    from landuse.scoring.spark import predictions_url
    from landuse.tiling import TilingConfig, build_county

    county = counties.load_registry(str(synthetic / "counties.json"))[county_name]
    for result in build_county(county, [2010, 2016], root, TilingConfig(tile_px=64)):
        m = storage.read_parquet(result.manifest_url).to_pandas()
        m = m[m["label"].isin(labels.CLASSES)]
        frame = pd.DataFrame({"tile_id": m["tile_id"], "county": county.name,
                              "year": result.year, "image_url": m["image_url"],
                              "label": m["label"], "predicted": m["label"],
                              "predicted_group": m["label"].map(labels.CLASS_TO_GROUP),
                              "confidence": 0.9, "model_id": "labels@1", "error": None})
        for c in labels.CLASSES:
            frame[f"p_{c}"] = (m["label"] == c).map({True: 0.9, False: 0.02})
        for name in PREDICTION_SCHEMA.names:
            frame[name] = frame.get(name)
        storage.write_parquet(predictions_url(storage.join(root, "predictions"), county.name,
                                              result.year), to_table(frame))
