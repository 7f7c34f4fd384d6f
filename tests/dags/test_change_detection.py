"""change_detection with dag.test(): mapped counties, published reports, clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from landuse import labels, storage

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def root(tmp_path_factory, synthetic: Path) -> Path:
    """Both synthetic counties tiled for 2010 and 2016, with 'predictions' equal to the NLCD
    labels (so the change found is exactly the labels' change)."""
    from landuse import counties
    from landuse.scoring.predict import PREDICTION_SCHEMA, to_table
    from landuse.scoring.spark import predictions_url
    from landuse.tiling import TilingConfig, build_county

    out = tmp_path_factory.mktemp("change-dag")
    for county in counties.load_registry(str(synthetic / "counties.json")).values():
        for result in build_county(county, [2010, 2016], str(out), TilingConfig(tile_px=64)):
            m = pd.read_parquet(result.manifest_url)
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
            storage.write_parquet(predictions_url(str(out / "predictions"), county.name,
                                                  result.year), to_table(frame))
    return out


def _run(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "change_detection.py")).get_dag(
        "change_detection")
    return dag.test(run_conf=conf)


def test_reports_every_county_with_its_planted_change(airflow_db, root: Path, synthetic: Path):
    run = _run({"storage_root": str(root), "registry": str(synthetic / "counties.json"),
                "year_b": 2016, "embeddings": False})
    assert run.state == "success"
    for county in ("synthetic-county-1", "synthetic-county-2"):
        folder = root / "change" / f"county={county}" / "2010-2016"  # year A found by itself
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["reference"] == "predictions"  # the same model scored both years
        planted = summary["planted_change"]
        assert planted["recall"] >= 0.9 and planted["precision"] >= 0.6, planted
        assert (folder / "report.md").read_text().startswith(f"# Land-use change in {county}")


def test_a_year_without_predictions_fails_the_run_and_writes_nothing(airflow_db, root: Path):
    run = _run({"storage_root": str(root), "year_b": 2020, "embeddings": False})
    assert run.state == "failed"
    assert not list((root / "change").glob("county=*/*-2020"))


def test_a_county_with_nothing_earlier_fails_clearly(airflow_db, root: Path):
    from landuse.scoring.spark import predictions_url

    url = predictions_url(str(root / "predictions"), "synthetic-county-1", 2010)
    run = _run({"storage_root": str(root), "counties": ["synthetic-county-1"],
                "year_b": 2010, "embeddings": False})
    assert Path(url).exists() and run.state == "failed"


def test_features_on_spark_and_the_fdr_reach_the_no_change_test(airflow_db, root: Path,
                                                                 synthetic: Path):
    from landuse.change.features import features_url

    run = _run({"storage_root": str(root), "registry": str(synthetic / "counties.json"),
                "counties": ["synthetic-county-2"], "year_b": 2016, "fdr": 0.2,
                "features_master": "local[1]"})
    assert run.state == "success"
    for year in (2010, 2016):  # computed on Spark, committed for later pairs
        assert Path(features_url(str(root), "synthetic-county-2", year)).exists()
    folder = root / "change" / "county=synthetic-county-2" / "2010-2016"
    test = json.loads((folder / "summary.json").read_text())["change_test"]
    assert test["fdr"] == 0.2 and test["expected_false"] == round(0.2 * test["flagged"], 1)
    assert "at FDR 0.2" in (folder / "report.md").read_text()


@pytest.mark.parametrize(("name", "value"), [("fdr", 0), ("fdr", 1), ("fdr", 1.5),
                                             ("features_master", "yarn")])
def test_bad_change_test_params_are_refused(airflow_db, root: Path, name: str, value: object):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError, match=name):
        _run({"storage_root": str(root), "year_b": 2016, name: value})
