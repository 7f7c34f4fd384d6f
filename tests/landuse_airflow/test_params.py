"""Every location a run's params name is checked before the run reads or writes anything."""

from __future__ import annotations

import pytest

from landuse_airflow.params import check_places


def test_params_that_name_places_are_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("LANDUSE_ALLOWED_ROOTS", str(tmp_path))
    monkeypatch.delenv("LANDUSE_ALLOWED_SPARK_MASTERS", raising=False)
    good = {"storage_root": str(tmp_path / "out"), "model": "champion", "nlcd": None,
            "output": "", "spark_master": "local[2]", "years": [2016]}
    check_places(good)
    check_places({**good, "spark_master": "none"})  # in the task's own process
    for key, value in [("storage_root", "/etc"), ("registry", "/root/counties.json"),
                       ("model", "https://example.org/bundle"), ("image", "/var/x.tif"),
                       ("output", "abfs://elsewhere/out"), ("split_url", "/x/split.parquet"),
                       ("nlcd", "/opt/nlcd.tif")]:
        with pytest.raises(ValueError, match=key):
            check_places({**good, key: value})
    with pytest.raises(ValueError, match="spark_master"):
        check_places({**good, "spark_master": "spark://203.0.113.5:7077"})
