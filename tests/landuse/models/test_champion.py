"""Champion against challenger: a retrain replaces the champion only with a better model.

The current champion is a hand-built bundle that always answers one class, so its real
validation score on the tiny split is the share of that class; challengers carry hand-set
validation metrics, as the trainers would have recorded them on the same split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from landuse import storage
from landuse.models.bundle import load_bundle
from landuse.models.evaluation import UnfitModel, evaluate_on_validation
from landuse.models.preprocessing import PreprocessSpec
from landuse.models.tracking import promote_best, read_champion

CLASSES = ("Developed", "Forest", "Shrub")
SPEC = PreprocessSpec(input_size=64)


def _always(onnx_kit, folder: Path, answer: str, classes=CLASSES, spec=SPEC) -> Path:
    """A bundle that predicts ``answer`` for every tile (recorded metrics made up: only a
    first promotion reads them)."""
    weights = np.zeros((3, len(classes)), dtype=np.float32)
    bias = np.array([8.0 if c == answer else 0.0 for c in classes], dtype=np.float32)
    onnx_kit.bundle(folder, spec, classes, weights=weights, bias=bias)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["metrics"] = {"accuracy": 0.5, "group_accuracy": 0.5}
    (folder / "bundle.json").write_text(json.dumps(meta))
    return folder


def _candidate(onnx_kit, folder: Path, split_url: str, accuracy: float,
               group_accuracy: float, seed: int) -> dict:
    """A candidate with recorded validation metrics on ``split_url``."""
    weights, bias = onnx_kit.weights(len(CLASSES), seed=seed)
    onnx_kit.bundle(folder, SPEC, CLASSES, weights=weights, bias=bias)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["name"] = folder.name
    meta["metrics"] = {"accuracy": accuracy, "group_accuracy": group_accuracy}
    meta["lineage"]["split_sha256"] = _sha(split_url)
    (folder / "bundle.json").write_text(json.dumps(meta))
    return {"bundle": str(folder), "run_id": None, "split_url": split_url}


def _sha(url: str) -> str:
    return hashlib.sha256(storage.read_bytes(url)).hexdigest()


def _share(tiny_dataset, label: str) -> float:
    return float((tiny_dataset.validation["label"] == label).mean())


@pytest.fixture
def champion(onnx_kit, tiny_dataset, tmp_path) -> tuple[str, float]:
    """A models root whose champion always answers Developed; returns (root, its accuracy)."""
    models = str(tmp_path / "models")
    incumbent = _always(onnx_kit, tmp_path / "always-developed", "Developed")
    first = promote_best([{"bundle": str(incumbent), "run_id": None}], models)
    assert first["decision"]["decision"] == "first"
    return models, _share(tiny_dataset, "Developed")


def _decisions(models: str) -> list[dict]:
    return [json.loads(storage.read_bytes(u))
            for u in storage.glob(storage.join(models, "decisions", "*.json"))]


def test_champion_is_evaluated_like_the_candidates(onnx_kit, tiny_dataset, tmp_path):
    bundle = load_bundle(_always(onnx_kit, tmp_path / "shrub", "Shrub"))
    metrics = evaluate_on_validation(bundle, tiny_dataset.url)
    assert metrics["accuracy"] == pytest.approx(_share(tiny_dataset, "Shrub"))
    assert metrics["tiles"] == len(tiny_dataset.validation)
    assert metrics["classes"] == list(CLASSES)


def test_first_run_promotes(onnx_kit, tiny_dataset, tmp_path):
    models = str(tmp_path / "models")
    result = promote_best(
        [_candidate(onnx_kit, tmp_path / "a", tiny_dataset.url, 0.6, 0.7, seed=1)], models)
    pointer = read_champion(models)
    assert pointer == result
    decision = pointer["decision"]
    assert (decision["decision"], decision["changed"]) == ("first", True)
    assert decision["incumbent_model_id"] is None and decision["incumbent_accuracy"] is None
    assert decision["challenger_accuracy"] == 0.6
    assert decision["split_sha256"] == _sha(tiny_dataset.url)
    assert [d["decision"] for d in _decisions(models)] == ["first"]


def test_worse_challenger_is_kept_out(onnx_kit, tiny_dataset, tmp_path, champion):
    models, incumbent_accuracy = champion
    before = storage.read_bytes(storage.join(models, "champion.json"))
    worse = _candidate(onnx_kit, tmp_path / "worse", tiny_dataset.url,
                       incumbent_accuracy - 0.1, 1.0, seed=2)
    result = promote_best([worse], models)
    assert storage.read_bytes(storage.join(models, "champion.json")) == before
    decision = result["decision"]
    assert (decision["decision"], decision["changed"]) == ("kept", False)
    assert result["model_id"] == json.loads(before)["model_id"]  # the champion in force
    assert decision["incumbent_accuracy"] == pytest.approx(incumbent_accuracy)
    assert decision["challenger_accuracy"] == pytest.approx(incumbent_accuracy - 0.1)
    assert decision["incumbent_model_id"] == json.loads(before)["model_id"]
    assert decision["split_sha256"] == _sha(tiny_dataset.url)
    assert "not better" in decision["reason"]
    assert [d["decision"] for d in _decisions(models)] == ["first", "kept"]


def test_tie_keeps_the_champion(onnx_kit, tiny_dataset, tmp_path, champion):
    models, incumbent_accuracy = champion
    # Always-Developed: every Developed tile right, every other tile wrong, in groups too.
    tie = _candidate(onnx_kit, tmp_path / "tie", tiny_dataset.url, incumbent_accuracy,
                     incumbent_accuracy, seed=3)
    assert promote_best([tie], models)["decision"]["decision"] == "kept"


def test_better_challenger_replaces_it(onnx_kit, tiny_dataset, tmp_path, champion):
    models, incumbent_accuracy = champion
    better = _candidate(onnx_kit, tmp_path / "better", tiny_dataset.url,
                        incumbent_accuracy + 0.1, 0.0, seed=4)
    result = promote_best([better], models)
    pointer = read_champion(models)
    assert pointer == result and pointer["name"] == "better"
    decision = pointer["decision"]
    assert (decision["decision"], decision["changed"]) == ("promoted", True)
    assert decision["incumbent_accuracy"] == pytest.approx(incumbent_accuracy)
    assert decision["incumbent_model_id"].startswith("hand-built@")


def test_force_promotes_a_worse_challenger(onnx_kit, tiny_dataset, tmp_path, champion):
    models, incumbent_accuracy = champion
    worse = _candidate(onnx_kit, tmp_path / "worse", tiny_dataset.url, 0.0, 0.0, seed=5)
    result = promote_best([worse], models, force=True)
    assert read_champion(models) == result and result["name"] == "worse"
    decision = result["decision"]
    assert (decision["decision"], decision["forced"]) == ("forced", True)
    assert decision["incumbent_accuracy"] == pytest.approx(incumbent_accuracy)


def test_champion_that_does_not_fit_the_split_loses(onnx_kit, tiny_dataset, tmp_path):
    models = str(tmp_path / "models")
    narrow = _always(onnx_kit, tmp_path / "two-classes", "Developed",
                     classes=("Developed", "Forest"))
    promote_best([{"bundle": str(narrow), "run_id": None}], models)
    worse = _candidate(onnx_kit, tmp_path / "worse", tiny_dataset.url, 0.0, 0.0, seed=6)
    decision = promote_best([worse], models)["decision"]
    assert (decision["decision"], decision["changed"]) == ("promoted", True)
    assert "cannot be evaluated" in decision["reason"] and "Shrub" in decision["reason"]
    assert decision["incumbent_accuracy"] is None
    assert read_champion(models)["name"] == "worse"


def test_input_size_must_match_the_candidates(onnx_kit, tiny_dataset, tmp_path):
    bundle = load_bundle(_always(onnx_kit, tmp_path / "small", "Developed",
                                 spec=PreprocessSpec(input_size=32)))
    with pytest.raises(UnfitModel, match="32 px input, the candidates 64 px"):
        evaluate_on_validation(bundle, tiny_dataset.url, input_size=64)


def test_champion_whose_bundle_is_gone_loses(onnx_kit, tiny_dataset, tmp_path, champion):
    import shutil

    models, _ = champion
    shutil.rmtree(tmp_path / "always-developed")
    worse = _candidate(onnx_kit, tmp_path / "worse", tiny_dataset.url, 0.0, 0.0, seed=7)
    decision = promote_best([worse], models)["decision"]
    assert decision["decision"] == "promoted" and "bundle.json is missing" in decision["reason"]


def test_changed_split_cannot_be_compared(onnx_kit, tiny_dataset, tmp_path, champion):
    models, _ = champion
    stale = _candidate(onnx_kit, tmp_path / "stale", tiny_dataset.url, 0.9, 0.9, seed=8)
    meta = json.loads((tmp_path / "stale" / "bundle.json").read_text())
    meta["lineage"]["split_sha256"] = "0" * 64
    (tmp_path / "stale" / "bundle.json").write_text(json.dumps(meta))
    before = read_champion(models)
    with pytest.raises(ValueError, match="changed since"):
        promote_best([stale], models)
    assert read_champion(models) == before


def test_decision_is_tracked_in_mlflow(onnx_kit, tiny_dataset, tmp_path, champion, monkeypatch):
    from mlflow import MlflowClient

    from landuse.models.tracking import log_candidate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    models, incumbent_accuracy = champion
    worse = _candidate(onnx_kit, tmp_path / "worse", tiny_dataset.url, 0.1, 0.1, seed=9)
    worse["run_id"] = log_candidate(load_bundle(worse["bundle"]))
    promote_best([worse], models)
    run = MlflowClient().get_run(worse["run_id"])
    assert run.data.tags["champion_decision"] == "kept"
    assert run.data.tags["incumbent_model_id"] == read_champion(models)["model_id"]
    assert run.data.metrics["challenger_accuracy"] == pytest.approx(0.1)
    assert run.data.metrics["incumbent_accuracy"] == pytest.approx(incumbent_accuracy)
    assert not MlflowClient().search_registered_models()  # a kept champion registers nothing


def test_the_champion_is_evaluated_once_on_the_test_counties(onnx_kit, tiny_dataset, tmp_path):
    from landuse.models.tracking import evaluate_on_test, evaluation_url, read_evaluation

    # a split whose test part is the validation county's tiles, from synthetic counties
    split = tiny_dataset.split
    held_out = split[split["split"] == "validation"].assign(split="test")
    split_url = str(tmp_path / "dataset" / "split.parquet")
    storage.write_parquet(split_url, pa.Table.from_pandas(
        pd.concat([split, held_out], ignore_index=True), preserve_index=False))
    storage.write_bytes(str(tmp_path / "dataset" / "summary.json"),
                        json.dumps({"synthetic_training": True}).encode())
    folder = _always(onnx_kit, tmp_path / "shrub", "Shrub")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["lineage"]["split_sha256"] = _sha(split_url)
    (folder / "bundle.json").write_text(json.dumps(meta))
    models = str(tmp_path / "models")

    pointer = promote_best([{"bundle": str(folder), "run_id": None, "split_url": split_url}],
                           models)
    record = evaluate_on_test(pointer, models, split_url)
    model_id = load_bundle(folder).model_id
    assert read_evaluation(models, model_id) == record
    assert record["split_url"] == split_url and record["trained_on_synthetic"] is True
    m = record["metrics"]
    assert m["split"] == "test" and m["counties"] == sorted(held_out["county"].unique())
    assert m["tiles"] == len(held_out)
    assert m["accuracy"] == pytest.approx(float((held_out["label"] == "Shrub").mean()))
    assert len(m["group_confusion"]) == len(m["groups"])  # change reports' error rates
    assert storage.exists(evaluation_url(models, model_id))

    # the tiny split has no test counties: recorded as such, no figure made up
    plain = _always(onnx_kit, tmp_path / "plain", "Shrub", classes=CLASSES)
    pointer = promote_best([{"bundle": str(plain), "run_id": None,
                             "split_url": tiny_dataset.url}], str(tmp_path / "models-2"))
    record = evaluate_on_test(pointer, str(tmp_path / "models-2"), tiny_dataset.url)
    assert record["metrics"] is None and "has no test tiles" in record["note"]


def test_reviewed_real_test_tiles_are_reported_apart(onnx_kit, tiny_dataset, tmp_path):
    from landuse.models.tracking import evaluate_on_test

    # test part: the validation county's tiles; some of them stand for reviewed real tiles
    split = tiny_dataset.split.assign(label_source="nlcd")
    held_out = split[split["split"] == "validation"].assign(split="test").reset_index(drop=True)
    real = held_out.index % 3 == 0
    held_out.loc[real, ["county", "synthetic", "label_source"]] = ["stutsman-nd", False,
                                                                   "review"]
    held_out.loc[held_out.index % 3 == 1, "label_source"] = "review"  # reviewed, synthetic
    trained = split[split["split"] == "train"].head(4).assign(
        county="stutsman-nd", synthetic=False, label_source="review")
    rows = pd.concat([split.drop(trained.index), trained, held_out], ignore_index=True)
    split_url = str(tmp_path / "dataset" / "split.parquet")
    storage.write_parquet(split_url, pa.Table.from_pandas(rows, preserve_index=False))
    storage.write_bytes(str(tmp_path / "dataset" / "summary.json"),
                        json.dumps({"synthetic_training": False}).encode())
    folder = _always(onnx_kit, tmp_path / "shrub", "Shrub")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["lineage"]["split_sha256"] = _sha(split_url)
    (folder / "bundle.json").write_text(json.dumps(meta))
    models = str(tmp_path / "models")
    pointer = promote_best([{"bundle": str(folder), "run_id": None, "split_url": split_url}],
                           models)

    record = evaluate_on_test(pointer, models, split_url)
    assert record["trained_on_synthetic"] is False  # real reviewed tiles in training
    assert record["metrics"]["tiles"] == len(held_out)
    r = record["metrics_reviewed"]
    expected = held_out[real]
    assert r["tiles"] == len(expected) and r["counties"] == ["stutsman-nd"]
    assert r["accuracy"] == pytest.approx(float((expected["label"] == "Shrub").mean()))
    assert r["per_class"]["Shrub"]["support"] == int((expected["label"] == "Shrub").sum())
    assert r["measured_classes"] == [c for c in CLASSES if c in set(expected["label"])]
    assert r["measured_on"].startswith(f"{len(r['measured_classes'])} classes")
    assert r["others_synthetic"] is True

    # a test part without reviewed real tiles has no such figure
    plain = rows.assign(label_source="nlcd")
    storage.write_parquet(split_url, pa.Table.from_pandas(plain, preserve_index=False))
    assert evaluate_on_test(pointer, models, split_url)["metrics_reviewed"] is None
