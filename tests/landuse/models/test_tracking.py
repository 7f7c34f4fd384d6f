"""Champion promotion: the best candidate by validation accuracy, ties broken by groups."""

from __future__ import annotations

import json

import pytest

from landuse.models.preprocessing import PreprocessSpec
from landuse.models.tracking import promote_best, read_champion

SPEC = PreprocessSpec(input_size=8)


def _candidate(onnx_kit, folder, accuracy, group_accuracy):
    onnx_kit.bundle(folder, SPEC)
    meta = json.loads((folder / "bundle.json").read_text())
    meta["name"] = folder.name
    meta["metrics"] = {"accuracy": accuracy, "group_accuracy": group_accuracy}
    (folder / "bundle.json").write_text(json.dumps(meta))
    return {"bundle": str(folder), "run_id": None}


def test_best_accuracy_wins_and_ties_go_to_group_accuracy(onnx_kit, tmp_path):
    candidates = [
        _candidate(onnx_kit, tmp_path / "a", 0.80, 0.95),
        _candidate(onnx_kit, tmp_path / "b", 0.85, 0.90),
        _candidate(onnx_kit, tmp_path / "c", 0.85, 0.93),
    ]
    champion = promote_best(candidates, str(tmp_path / "models"))
    assert champion["name"] == "c"
    assert read_champion(str(tmp_path / "models")) == champion
    assert len(champion["candidates"]) == 3


def test_bad_candidate_leaves_the_champion_alone(onnx_kit, tmp_path):
    models = str(tmp_path / "models")
    promote_best([_candidate(onnx_kit, tmp_path / "a", 0.8, 0.9)], models)
    before = read_champion(models)
    unscored = _candidate(onnx_kit, tmp_path / "b", None, None)
    with pytest.raises(ValueError, match="no validation accuracy"):
        promote_best([_candidate(onnx_kit, tmp_path / "c", 0.99, 0.99), unscored], models)
    with pytest.raises(ValueError, match="no candidates"):
        promote_best([], models)
    assert read_champion(models) == before


def test_no_champion_yet(tmp_path):
    assert read_champion(str(tmp_path)) is None
