"""In-process scoring: sources, the batch loop, error rows, the accuracy report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from landuse.models.bundle import load_bundle
from landuse.models.runners import OnnxRunner
from landuse.scoring.predict import (
    PREDICTION_SCHEMA,
    accuracy_report,
    load_source,
    score_frame,
    to_table,
)


def test_manifest_glob_and_image_folder_sources(tiled):
    one = load_source(str(tiled / "naip" / "synthetic-county-1" / "2010" / "manifest.parquet"))
    both = load_source(str(tiled / "naip" / "*" / "2010" / "manifest.parquet"))
    assert set(one["county"]) == {"synthetic-county-1"}
    assert set(both["county"]) == {"synthetic-county-1", "synthetic-county-2"}
    assert len(both) > len(one) > 0
    folder = load_source(str(tiled / "naip" / "synthetic-county-1" / "2010" / "tiles"))
    assert sorted(folder["tile_id"]) == sorted(one["tile_id"])
    assert folder["county"].isna().all()


def test_nothing_to_score_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to score"):
        load_source(str(tmp_path))


def test_scores_every_tile_and_turns_bad_tiles_into_error_rows(tiled, bundle, tmp_path):
    rows = load_source(str(tiled / "naip" / "synthetic-county-1" / "2016" / "manifest.parquet"))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    extra = pd.DataFrame([
        {"tile_id": "corrupt", "image_url": str(corrupt)},
        {"tile_id": "missing", "image_url": str(tmp_path / "missing.png")},
    ])
    rows = pd.concat([rows, extra], ignore_index=True)
    runner = OnnxRunner(load_bundle(bundle))
    out = score_frame(rows, runner, batch_size=7)
    assert len(out) == len(rows) and set(out["tile_id"]) == set(rows["tile_id"])
    errors = out.set_index("tile_id").loc[["corrupt", "missing"], "error"]
    assert "corrupt.png" in errors["corrupt"] and "missing.png" in errors["missing"]
    good = out[out["error"].isna()]
    probs = good[[f"p_{c}" for c in runner.bundle.spec.classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (good["predicted"] == np.array(runner.bundle.spec.classes)[probs.argmax(1)]).all()
    assert (good["model_id"] == runner.bundle.model_id).all()
    assert to_table(out).schema == PREDICTION_SCHEMA


def test_batching_does_not_change_predictions(tiled, bundle):
    rows = load_source(str(tiled / "naip" / "synthetic-county-2" / "2010" / "manifest.parquet"))
    runner = OnnxRunner(load_bundle(bundle))
    a = score_frame(rows, runner, batch_size=1)
    b = score_frame(rows, runner, batch_size=64)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


def test_accuracy_report_uses_labelled_tiles_only():
    frame = pd.DataFrame({
        "label": ["Forest", "Forest", "Shrub", None, "Water"],
        "predicted": ["Forest", "Shrub", "Shrub", "Forest", "Forest"],
        "error": [None, None, None, None, None],
    })
    report = accuracy_report(frame, ["Forest", "Shrub"])
    assert report["tiles"] == 3 and report["accuracy"] == pytest.approx(2 / 3)
    assert accuracy_report(frame.assign(label=None), ["Forest", "Shrub"]) is None
