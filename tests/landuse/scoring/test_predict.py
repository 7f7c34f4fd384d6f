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


def test_manifest_glob_and_image_folder_sources(tiled, tmp_path):
    from landuse.tiling import export_chips

    manifest = str(tiled / "naip" / "synthetic-county-1" / "2010" / "manifest.parquet")
    one = load_source(manifest)
    both = load_source(str(tiled / "naip" / "*" / "2010" / "manifest.parquet"))
    assert set(one["county"]) == {"synthetic-county-1"}
    assert set(both["county"]) == {"synthetic-county-1", "synthetic-county-2"}
    assert len(both) > len(one) > 0
    assert one["scene_url"].notna().all()  # scored from the scenes, chips or not
    assert one["image_url"].isna().all()  # tiling wrote no chips
    chips = pd.read_parquet(export_chips(manifest, str(tmp_path / "chips")))
    folder = load_source(str(tmp_path / "chips"))
    assert 0 < len(chips) < len(one)  # the trainable tiles
    assert sorted(folder["tile_id"]) == sorted(chips["tile_id"])
    assert folder["county"].isna().all()


def test_tensor_read_from_the_scene_is_the_chip_byte_for_byte(tiled_all, bundle):
    """Scoring reads each tile's window from its scene with tiling's own read: for every
    tile the network's input equals the one decoded from the chip tiling wrote."""
    from landuse import storage
    from landuse.models.preprocessing import decode, to_tensor
    from landuse.raster import open_raster
    from landuse.tiling import chip_rgb, read_tile

    spec = load_bundle(bundle).spec.preprocessing
    rows = load_source(str(tiled_all / "naip" / "*" / "*" / "manifest.parquet"))
    assert rows["image_url"].notna().all() and len(rows) > 50
    for scene, tiles in rows.groupby("scene_url"):
        with open_raster(scene) as src:
            for tile in tiles.itertuples():
                bounds = (tile.minx, tile.miny, tile.maxx, tile.maxy)
                from_scene = chip_rgb(read_tile(src, scene, bounds, ("red", "green", "blue"),
                                                int(tile.tile_px)))
                from_chip = decode(storage.read_bytes(tile.image_url), spec, tile.image_url)
                assert from_scene.tobytes() == from_chip.tobytes(), tile.tile_id
                x_scene = to_tensor(from_scene[None], spec)
                assert x_scene.tobytes() == to_tensor(from_chip[None], spec).tobytes()


def test_scene_scoring_equals_chip_scoring(tiled_all, bundle):
    from landuse.scoring.predict import score_chips, score_scene

    rows = load_source(str(tiled_all / "naip" / "synthetic-county-1" / "2016" /
                           "manifest.parquet"))
    runner = OnnxRunner(load_bundle(bundle))
    probs = [f"p_{c}" for c in runner.bundle.spec.classes]
    scenes = pd.concat([score_scene(g, runner, 8) for _, g in rows.groupby("scene_url")])
    chips = score_chips(rows, runner, 8)
    a, b = scenes.set_index("tile_id").sort_index(), chips.set_index("tile_id").sort_index()
    assert a.index.equals(b.index) and a["error"].isna().all()
    np.testing.assert_array_equal(a[probs].to_numpy(), b[probs].to_numpy())


def test_an_unreadable_scene_makes_error_rows(tiled, bundle, tmp_path):
    from landuse.scoring.predict import score_scene

    rows = load_source(str(tiled / "naip" / "synthetic-county-2" / "2010" / "manifest.parquet"))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not a tiff")
    rows = rows.assign(scene_url=str(broken)).head(9)
    out = score_scene(rows, OnnxRunner(load_bundle(bundle)), 4)
    assert len(out) == 9 and out["error"].str.contains("broken.tif").all()


def test_probability_columns_follow_the_class_list():
    from landuse import labels

    probs = [n for n in PREDICTION_SCHEMA.names if n.startswith("p_")]
    assert probs == [f"p_{c}" for c in labels.CLASSES]


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
