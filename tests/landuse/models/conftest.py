"""Fixtures for the model tests: a tiny real tiled dataset (the hand-built ONNX bundles,
``onnx_kit``, live in tests/onnx_kit.py, shared with the scoring tests).

The dataset goes through the library's own path (synthetic counties -> tiling -> split), so
the trainer and the preprocessing parity checks read the same scene windows scoring does.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest

from landuse import storage

# Synthetic seed 0 with 600 m parcels: county 1 trains on Developed, Forest and Shrub
# (4 tiles each), county 2 validates on Developed and Shrub (4 each) at purity 0.9.
VAL_COUNTY = "synthetic-county-2"


@dataclass(frozen=True)
class TinyDataset:
    """A written split of tiles in real (synthetic) scenes."""

    url: str
    split: pd.DataFrame

    @property
    def train(self) -> pd.DataFrame:
        return self.split[self.split["split"] == "train"].reset_index(drop=True)

    @property
    def validation(self) -> pd.DataFrame:
        return self.split[self.split["split"] == "validation"].reset_index(drop=True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """Two 896 m synthetic counties, 2010 and 2016, tiled at 64 px, split by county."""
    from landuse.counties import load_registry
    from landuse.splits import build_dataset
    from landuse.synthetic import make_synthetic
    from landuse.tiling import TilingConfig, build_county

    out = tmp_path_factory.mktemp("tiny")
    make_synthetic(str(out / "synthetic"), counties=2, size_m=896, res_m=4.0, seed=0)
    registry = load_registry(str(out / "synthetic" / "counties.json"))
    config = TilingConfig(tile_px=64, purity_threshold=0.9)
    manifests = [
        result.manifest_url
        for name in registry
        for result in build_county(registry[name], [2010, 2016], str(out / "root"), config)
    ]
    dataset = build_dataset(manifests, str(out / "dataset"), val_counties=[VAL_COUNTY], seed=0)
    split = storage.read_parquet(dataset.url).to_pandas()
    train_classes = set(split[split["split"] == "train"]["label"])
    val_classes = set(split[split["split"] == "validation"]["label"])
    # The fixture's contract; the tests below rely on it.
    assert len(train_classes) >= 2 and len(val_classes) >= 2 and val_classes <= train_classes
    return TinyDataset(dataset.url, split)


# --- hand-built ONNX bundles ----------------------------------------------------------------
