"""Which NAIP vintages a refresh run processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from landuse import counties, storage
from landuse.refresh import (
    available_vintages,
    plan_refresh,
    processed_vintages,
    vintages_to_process,
)


@pytest.mark.parametrize(
    ("processed", "start", "end", "expected"),
    [
        (set(), 2010, 2011, [2010]),          # backfill run of 2010
        ({2010}, 2016, 2017, [2016]),         # backfill run of 2016
        ({2010}, 2012, 2013, []),             # a year without a vintage
        ({2010, 2016}, 2016, 2017, []),       # a rerun finds nothing left
        ({2010}, 2025, 2026, [2016, 2020]),   # scheduled: late-published vintages caught up
        ({2016}, 2025, 2026, [2020]),         # ...but never older than the last processed
        ({2016}, 2010, 2011, [2010]),         # a backfill of the past still does its year
    ],
)
def test_vintages_to_process(processed, start, end, expected):
    assert vintages_to_process([2010, 2016, 2020], processed, start, end) == expected


@pytest.fixture()
def registry(synthetic: Path) -> dict[str, counties.County]:
    return counties.load_registry(str(synthetic / "counties.json"))


def test_available_vintages_come_from_the_catalogue(registry):
    assert available_vintages(registry["synthetic-county-1"]) == [2010, 2016]


def test_processed_means_predictions_committed(tmp_path: Path):
    root = str(tmp_path)
    storage.write_bytes(storage.join(root, "predictions", "county=a-county", "year=2010",
                                     "predictions.parquet"), b"x")
    storage.write_bytes(storage.join(root, "naip", "a-county", "2016", "manifest.parquet"),
                        b"x")  # tiled but not scored: not processed
    assert processed_vintages(root, "a-county") == {2010}
    assert processed_vintages(root, "another") == set()


def test_plan_refresh_filters_states_and_skips_done(tmp_path: Path, registry):
    root = str(tmp_path)
    storage.write_bytes(storage.join(root, "predictions", "county=synthetic-county-1",
                                     "year=2010", "predictions.parquet"), b"x")
    jobs = plan_refresh(registry.values(), root, 2016, 2017, states=["ND"])
    assert jobs == [{"county": "synthetic-county-1", "year": 2016},  # 2010 done
                    {"county": "synthetic-county-2", "year": 2010},  # nothing done yet
                    {"county": "synthetic-county-2", "year": 2016}]
    assert plan_refresh(registry.values(), root, 2016, 2017, states=["ma"]) == []
