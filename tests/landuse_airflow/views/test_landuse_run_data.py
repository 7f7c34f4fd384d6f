"""The Land use view of scoring and training runs: a county-year's class map and shares from
committed predictions (local and abfs:// roots), a training run's candidates, decision and
confusion matrices from MLflow, names checked."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from landuse_view_inputs import COUNTY, tile_and_predict, track_training
from PIL import Image

from landuse import labels, storage
from landuse.models.tracking import models_root
from landuse_airflow.views import run_data, view_data

DAG_RUN = "manual__2026-01-02T03:04:05+00:00"


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> str:
    root = str(tmp_path_factory.mktemp("run-view-local"))
    tile_and_predict(root, synthetic)
    return root


@pytest.fixture(params=["local", "abfs"])
def root(request: pytest.FixtureRequest, synthetic: Path) -> str:
    if request.param == "local":
        return str(request.getfixturevalue("local_root"))
    url = f"abfs://{request.getfixturevalue('azure_env')}/scored"
    tile_and_predict(url, synthetic)
    return url


def test_a_county_years_class_map_and_shares(root: str):
    p = run_data.open_predictions(root, COUNTY, "2016")
    view = run_data.scoring_view(p)
    predictions = storage.read_parquet(p.url).to_pandas()
    assert view["tiles"] == view["scored"] == len(predictions) > 0
    expected = predictions["predicted"].value_counts()
    shares = {s["class"]: s for s in view["shares"]}
    assert {c: s["tiles"] for c, s in shares.items()} == expected.to_dict()
    assert sum(s["share"] for s in view["shares"]) == pytest.approx(1.0, abs=1e-3)
    assert [e["name"] for e in view["legend"]][:len(labels.CLASSES)] == list(labels.CLASSES)
    assert view["agreement_with_labels"]["accuracy"] == 1.0  # predictions are the labels
    assert view["models"] == ["labels@1"]

    [layer] = view["layers"]
    (south, west), (north, east) = layer["bounds"]
    assert south < north and west < east
    pixels = np.asarray(Image.open(io.BytesIO(
        run_data.scoring_layer_png(p, layer["name"]))).convert("RGBA"))
    assert (pixels[..., 3] == 0).any(), "no tile: transparent"
    for cls in expected.index:  # every predicted class is drawn in its legend colour
        rgb = labels.CLASS_COLOURS[cls]
        drawn = (pixels[..., :3] == rgb).all(axis=-1) & (pixels[..., 3] == 255)
        assert drawn.any(), cls
    [scene] = run_data.scoring_scenes(p)
    assert scene.endswith(".tif")
    assert "://" not in json.dumps(view) and str(root) not in json.dumps(view)


@pytest.mark.parametrize(("county", "year"), [
    ("../naip", "2016"), ("Synthetic-County-1", "2016"), (COUNTY, "16"), (COUNTY, "2016/.."),
    (COUNTY, "../2016"), ("a/b", "2016"), (COUNTY, "２０１６"),
])
def test_scoring_names_are_checked(local_root: str, county: str, year: str):
    with pytest.raises(ValueError, match=r"not allowed|four-digit"):
        run_data.open_predictions(local_root, county, year)


def test_missing_predictions_and_layers(local_root: str):
    with pytest.raises(view_data.NotFound, match="no predictions"):
        run_data.open_predictions(local_root, COUNTY, "2012")
    p = run_data.open_predictions(local_root, COUNTY, 2016)
    for name in ("change", "../classes", "classes.png", ""):
        with pytest.raises(view_data.NotFound):
            run_data.scoring_layer_png(p, name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, object]]]:
    root = str(tmp_path_factory.mktemp("run-view-models"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        champion = track_training(root, DAG_RUN, Path(root) / "work")
        yield root, champion


def test_a_training_runs_candidates_decision_and_confusion(trained, monkeypatch):
    root, champion = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    view = run_data.training_view(root, DAG_RUN)
    candidates = {c["name"]: c for c in view["candidates"]}
    assert set(candidates) == {"squeezenet-head", "squeezenet-logreg"}
    best = candidates["squeezenet-logreg"]
    assert best["model_id"] == champion["model_id"] and best["decision"] == "first"
    assert best["accuracy"] > candidates["squeezenet-head"]["accuracy"]
    assert set(best["per_class"]) == set(labels.CLASSES)
    assert view["decision"]["champion"] == champion["model_id"]
    test = view["champion"]["test"]
    assert test["metrics"]["counties"] == ["synthetic-county-2"]
    assert np.asarray(test["metrics"]["confusion"]).shape == (len(labels.CLASSES),) * 2
    body = json.dumps(view)
    assert root not in body and "://" not in body and "split_url" not in body

    png = run_data.confusion_png(root, DAG_RUN, best["mlflow_run_id"])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    # only this run's candidates, by MLflow run id
    for bad in ("0" * 32, "../" + best["mlflow_run_id"], best["mlflow_run_id"].upper()):
        with pytest.raises(view_data.NotFound):
            run_data.confusion_png(root, DAG_RUN, bad)
    with pytest.raises(view_data.NotFound):
        run_data.confusion_png(root, "manual__another", best["mlflow_run_id"])
    # another root's or another run's candidates are not this run's
    assert run_data.training_view(str(Path(root) / "elsewhere"), DAG_RUN)["candidates"] == []
    assert run_data.training_view(root, "manual__another")["candidates"] == []
    assert storage.exists(storage.join(models_root(root), "champion.json"))


def test_a_decision_reason_keeps_no_location():
    reason = ("the champion cannot be evaluated on this split: /srv/out/models/x/bundle.json "
              "and abfs://c/models/y differ; accuracy 0.8 / group accuracy 0.9")
    redacted = run_data._redact(reason)
    assert redacted is not None
    assert "/srv" not in redacted and "abfs" not in redacted
    assert "accuracy 0.8 / group accuracy 0.9" in redacted
    assert run_data._redact(None) is None
