"""One change run end to end on a synthetic county: the planted change is found, the report
is published whole (summary.json last), reruns replace it, and bad input writes nothing."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from landuse import labels, review, storage
from landuse.change import maps
from landuse.change.detect import ChangeInputError
from landuse.change.run import SUMMARY, change_url, read_summary, run_change
from landuse.scoring.spark import predictions_url

YEARS = (2010, 2016)


def _root(tmp_path, change_root, kit, predicted=YEARS, unlabelled=False):
    """A storage root with the synthetic county's manifests (tiles shared with the fixture)
    and, for the years in ``predicted``, predictions equal to that year's NLCD labels."""
    root = str(tmp_path / "root")
    name = change_root.county.name
    for year in YEARS:
        manifest = change_root.manifests[year]
        if unlabelled:
            manifest = manifest.assign(label=None, group=None)
        kit.write_manifest(root, name, year, manifest)
    for year in predicted:
        manifest = change_root.manifests[year]
        classes = [c if c in labels.CLASSES else "Herbaceous" for c in manifest["label"]]
        kit.write_predictions(root, name, year, kit.predictions(
            manifest, classes, 0.9, year=year, county=name, model_id="labels@1"))
    return root


def _files(url):
    out = set()
    for folder, _, names in os.walk(url):
        out |= {os.path.relpath(os.path.join(folder, n), url) for n in names}
    return out


def test_planted_change_is_found_and_the_report_is_whole(tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit)
    county = change_root.county
    result = run_change(root, county.name, 2010, 2016, reference="labels", truth=county.truth)
    assert result.url == change_url(root, county.name, 2010, 2016)
    assert result.url.endswith(f"change/county={county.name}/2010-2016")
    s = result.summary

    # with predictions equal to the labels, newly developed is the planted change
    planted = s["planted_change"]
    print(f"planted change: precision {planted['precision']}, recall {planted['recall']}, "
          f"IoU {planted['iou']} ({planted['reference']} planted tiles)")
    assert planted["reference"] >= 3
    assert planted["recall"] >= 0.9 and planted["precision"] >= 0.6
    assert s["reference"] == "labels" and s["model_b"] == "labels@1"
    assert "every model error on 2016 counts as change" in s["reference_choice"]
    assert "caveat" not in s  # a synthetic county
    assert "no held-out evaluation" in s["model"]["note"]
    assert s["tiles"] == len(change_root.manifests[2016]) == 36
    assert s["accuracy"]["2016"]["accuracy"] == 1.0

    # every file, and summary.json lists them
    files = _files(result.url)
    assert files == {*s["files"], SUMMARY}
    expected = {"report.md", "comparison.png", "changes.geojson", "tiles.parquet",
                "reference.tif", "groups_2010.tif", "groups_2016.tif", "classes_2016.tif",
                "change.tif", "reference.png", "groups_2016.png", "change.png"}
    assert expected <= files
    assert read_summary(result.url) == json.loads(json.dumps(s, default=str))
    parent = os.path.dirname(result.url)
    assert os.listdir(parent) == ["2010-2016"]  # no temporary folders left

    tiles = pd.read_parquet(os.path.join(result.url, "tiles.parquet"))
    assert len(tiles) == 36 and tiles["newly_developed"].sum() == s["newly_developed"]
    assert {"planted", "embedding_distance", "hotspot", "water_share_a", "p_no_change",
            "significant"} <= set(tiles.columns)

    with MemoryFile(storage.read_bytes(os.path.join(result.url, "change.tif"))) as mem, \
            mem.open() as src:
        assert src.crs == CRS.from_user_input(tiles["crs"].iloc[0]) and src.shape == (6, 6)
        assert src.transform.a == 224.0 and src.transform.e == -224.0
        change = src.read(1)
    # the change map's red tiles are the newly developed ones
    assert (change == 2).sum() == s["newly_developed"]
    assert (change > 0).all()  # every tile is on the map

    collection = json.loads(storage.read_bytes(os.path.join(result.url, "changes.geojson")))
    ids = {f["id"] for f in collection["features"]}
    assert ids == set(tiles.loc[tiles["changed"] | tiles["hotspot"] | tiles["significant"],
                                "tile_id"])
    lon, lat = np.array(collection["features"][0]["geometry"]["coordinates"][0]).mean(axis=0)
    assert -98.5 < lon < -97.5 and 45.5 < lat < 46.5  # where the synthetic county is

    with Image.open(os.path.join(result.url, "comparison.png")) as img:
        assert img.format == "PNG" and img.width > img.height

    report = storage.read_bytes(os.path.join(result.url, "report.md")).decode()
    assert f"**{s['newly_developed']} tiles newly developed** (" in report
    assert "## Planted change (synthetic truth" in report
    assert "## Change without labels (embedding distance)" in report
    assert "- [change.tif](change.tif)" in report

    e = s["embedding_change"]
    assert e["tiles"] == 36 and 0 < e["hotspots"] < 36
    assert {"precision", "recall", "iou"} <= set(e["water"])

    # the no-change test: planted development is change in appearance, and is found
    c = s["change_test"]
    both = int((tiles["planted"] & tiles["significant"]).sum())
    print(f"no-change test: {c['flagged']} of {c['tiles']} significant; planted tiles "
          f"{int(tiles['planted'].sum())}, both {both}")
    assert c["tiles"] == 36 and c["fdr"] == 0.05
    assert c["flagged"] == int(tiles["significant"].sum()) > 0
    assert c["expected_false"] == round(0.05 * c["flagged"], 1)
    # 11 of 36 tiles planted: a small county with much change gives the test little power
    # (see docs/change.md), but what it flags is planted and the planted rank first
    flagged = tiles["significant"]
    assert (tiles.loc[flagged, "planted"]).mean() >= 0.8
    assert (tiles.loc[tiles["planted"], "p_no_change"].median()
            < tiles.loc[~tiles["planted"], "p_no_change"].median() / 5)
    assert tiles.loc[tiles["significant"], "p_no_change"].max() < 0.05
    [fit] = c["normalisation"]
    assert fit["scene_b"].endswith(".tif") and len(fit["gain"]) == 4
    assert "## Tested against no change (false-discovery rate)" in report
    assert "no_change_test.png" in files
    assert f"about {c['expected_false']:.1f} of them are expected to be false" in report


def test_scored_with_a_model(tmp_path, change_root, change_kit, onnx_kit):
    """Predictions of a (tiny, untrained) ONNX model for both years, scored in process."""
    from landuse.models.bundle import load_bundle
    from landuse.models.preprocessing import PreprocessSpec
    from landuse.models.runners import OnnxRunner
    from landuse.scoring.predict import load_source, score_frame, to_table
    from landuse.tiling import manifest_url

    root = _root(tmp_path, change_root, change_kit, predicted=())
    name = change_root.county.name
    spec = PreprocessSpec(input_size=64, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0))
    runner = OnnxRunner(load_bundle(onnx_kit.bundle(tmp_path / "bundle", spec,
                                                    labels.CLASSES)))
    scored = {}
    for year in YEARS:
        frame = score_frame(load_source(manifest_url(root, name, year)), runner)
        storage.write_parquet(predictions_url(storage.join(root, "predictions"), name, year),
                              to_table(frame))
        scored[year] = frame.set_index("tile_id")
    result = run_change(root, name, 2010, 2016, reference="labels", threshold=0.0,
                        embeddings=False)
    s = result.summary
    assert s["model_b"] == s["model_a"] == runner.bundle.model_id
    assert set(s["accuracy"]) == {"2010", "2016"}
    assert "embedding_change" not in s and "planted_change" not in s
    # newly developed: 2010 label Undeveloped/Cultivated, 2016 prediction Developed
    ref = change_root.manifests[2010].set_index("tile_id")["label"].map(
        {**labels.CLASS_TO_GROUP, "Water": "Water"})
    expected = ref.isin(["Undeveloped", "Cultivated"]) & (
        scored[2016]["predicted_group"].reindex(ref.index) == "Developed")
    assert s["newly_developed"] == int(expected.sum())
    assert s["compared"] == int(ref.notna().sum())
    counts = {row["map"]: row for row in s["counts"]}
    assert set(counts) == {"2010 labels", "2010 predictions", "2016 predictions"}
    assert counts["2016 predictions"]["Developed"] == int(
        (scored[2016]["predicted_group"] == "Developed").sum())
    assert {"groups_2010.tif", "groups_2016.tif"} <= _files(result.url)


def test_rerun_replaces_the_report(tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit)
    name = change_root.county.name
    first = run_change(root, name, 2010, 2016, reference="labels", embeddings=False)
    assert "groups_2010.tif" in first.summary["files"]
    with open(os.path.join(first.url, "stale.txt"), "w") as f:
        f.write("from an older run")
    tiles = storage.read_parquet(os.path.join(first.url, "tiles.parquet")).to_pandas()
    answer = review.record(first.url, tiles, user="ana", tile_id=tiles["tile_id"][0],
                           answer="change")
    os.remove(predictions_url(storage.join(root, "predictions"), name, 2010))
    second = run_change(root, name, 2010, 2016, smooth=True, embeddings=False)
    assert second.url == first.url
    files = {f for f in _files(second.url) if not f.startswith("reviews/")}
    assert files == {*second.summary["files"], SUMMARY}
    assert "stale.txt" not in files and "groups_2010.tif" not in files
    # The analysts' answers are theirs, not the report's: a rerun keeps them, and its
    # summary and report carry their figures.
    assert review.read_answers(second.url).to_dict("records") == [answer]
    assert read_summary(second.url)["review"]["answers"] == 1
    assert review.REVIEW_SECTION in storage.read_bytes(
        os.path.join(second.url, "report.md")).decode()
    assert read_summary(second.url)["smoothed"] is True
    assert "smoothed (3×3 plurality)" in storage.read_bytes(
        os.path.join(second.url, "report.md")).decode()
    assert os.listdir(os.path.dirname(second.url)) == ["2010-2016"]


def test_summary_is_the_commit_marker(tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit, predicted=(2016,))
    name = change_root.county.name
    url = change_url(root, name, 2010, 2016)
    assert read_summary(url) is None
    result = run_change(root, name, 2010, 2016, embeddings=False)
    summary = read_summary(url)
    assert summary is not None and summary["newly_developed"] == result.summary["newly_developed"]
    assert SUMMARY not in summary["files"]
    for f in summary["files"]:  # everything it lists is there
        assert os.path.getsize(os.path.join(url, f)) > 0
    os.remove(os.path.join(url, SUMMARY))
    assert read_summary(url) is None  # files without the marker are not a report


def test_reference_from_predictions_and_another_folder(tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit, unlabelled=True)
    out = str(tmp_path / "elsewhere" / "report")
    result = run_change(root, change_root.county.name, 2010, 2016, out=out, embeddings=False)
    assert result.url == out and read_summary(out) is not None
    assert not os.path.exists(os.path.join(root, "change"))
    s = result.summary
    assert s["reference"] == "predictions" and s["accuracy"] == {}
    assert {row["map"] for row in s["counts"]} == {"2010 predictions", "2016 predictions"}
    assert "groups_2010.tif" not in s["files"]  # year A is the reference map
    with MemoryFile(storage.read_bytes(os.path.join(out, "reference.tif"))) as mem, \
            mem.open() as src:
        assert src.tags()["TIFFTAG_IMAGEDESCRIPTION"] == "2010 predictions groups"


@pytest.mark.parametrize("problem", ["no 2016 predictions", "other model", "shifted grid",
                                     "years"])
def test_bad_input_writes_nothing(tmp_path, change_root, change_kit, problem):
    root = _root(tmp_path, change_root, change_kit)
    name = change_root.county.name
    if problem == "no 2016 predictions":
        os.remove(predictions_url(storage.join(root, "predictions"), name, 2016))
    elif problem == "other model":  # same-model comparison asked for, years by two models
        manifest = change_root.manifests[2016]
        change_kit.write_predictions(root, name, 2016, change_kit.predictions(
            manifest, ["Forest"] * len(manifest), county=name,
            model_classes=("Developed", "Forest", "Shrub")))
    elif problem == "shifted grid":
        shifted = change_root.manifests[2016].copy()
        shifted.loc[0, ["minx", "maxx"]] += 2.0
        change_kit.write_manifest(root, name, 2016, shifted)
    years = (2016, 2010) if problem == "years" else YEARS
    with pytest.raises(ChangeInputError):
        run_change(root, name, *years, reference="predictions", embeddings=False)
    assert not os.path.exists(os.path.join(root, "change"))


def test_a_failed_rerun_keeps_the_published_report(tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit)
    name = change_root.county.name
    first = run_change(root, name, 2010, 2016, embeddings=False)
    before = {f: storage.read_bytes(os.path.join(first.url, f)) for f in _files(first.url)}
    os.remove(predictions_url(storage.join(root, "predictions"), name, 2016))
    with pytest.raises(ChangeInputError, match="no predictions"):
        run_change(root, name, 2010, 2016, embeddings=False)
    after = {f: storage.read_bytes(os.path.join(first.url, f)) for f in _files(first.url)}
    assert after == before
    assert os.listdir(os.path.dirname(first.url)) == ["2010-2016"]


def test_report_pngs_are_figures_in_the_map_palettes(tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit, predicted=(2016,))
    result = run_change(root, change_root.county.name, 2010, 2016, embeddings=False)
    with Image.open(io.BytesIO(storage.read_bytes(os.path.join(result.url,
                                                               "groups_2016.png")))) as img:
        assert img.width > 6 * 8 and img.height > 6 * 8  # a figure: title, legend, scale bar
        colours = {tuple(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3)}
    palette = {rgb for _, rgb in maps.GROUP_PALETTE}
    assert {(255, 0, 0), (0, 150, 0)} <= colours & palette  # Developed and Undeveloped tiles
    assert {"shares.png", "transitions.png"} <= set(result.summary["files"])
    report = storage.read_bytes(os.path.join(result.url, "report.md")).decode()
    assert "![tiles per group](shares.png)" in report


def _evaluation(root: str, county: str, part: str, synthetic: bool) -> dict:
    """A held-out evaluation of ``labels@1`` as training records it, on a split in which
    ``county`` is in ``part``."""
    from landuse.models.tracking import evaluation_url, models_root

    split_url = storage.join(root, "naip", "dataset", "split.parquet")
    storage.write_parquet(split_url, pa.Table.from_pandas(pd.DataFrame(
        {"tile_id": ["t1", "t2"], "county": [county, "other"], "split": [part, "train"]})))
    record = {"model_id": "labels@1", "split_url": split_url, "trained_on_synthetic": synthetic,
              "metrics": {"accuracy": 0.8, "group_accuracy": 0.9, "tiles": 300,
                          "counties": [county if part == "test" else "testcounty-9"],
                          # rows truth, columns prediction: Developed, Cultivated, Undeveloped
                          "group_confusion": [[90, 5, 5], [10, 80, 10], [20, 0, 80]]}}
    storage.write_bytes(evaluation_url(models_root(root), "labels@1"),
                        json.dumps(record).encode())
    return record


def test_same_model_by_default_with_the_count_expected_from_model_error(
        tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit)
    name = change_root.county.name
    _evaluation(root, name, "test", synthetic=True)
    s = run_change(root, name, 2010, 2016, truth=change_root.county.truth,
                   embeddings=False).summary
    assert s["reference"] == "predictions" and s["model_a"] == s["model_b"] == "labels@1"
    assert s["reference_choice"] == "2010 predictions by the same model as 2016"
    assert s["model"]["split"] == "test" and s["model"]["county_part"] == "test"
    assert "caveat" not in s  # synthetic county: the synthetic-trained model may speak
    # year A's groups: every compared tile's 2010 prediction, at the test error rates
    t = pd.read_parquet(os.path.join(change_url(root, name, 2010, 2016), "tiles.parquet"))
    compared = t.loc[t["transition"].notna(), "ref_group"].value_counts()
    e = s["expected_from_model_error"]["newly_developed"]
    assert e["expected"] == pytest.approx(
        compared.get("Cultivated", 0) * 0.1 + compared.get("Undeveloped", 0) * 0.2, abs=0.05)
    assert e["low"] <= e["expected"] <= e["high"]
    changed = s["expected_from_model_error"]["changed"]
    assert changed["expected"] == pytest.approx(
        compared.get("Developed", 0) * 0.1 + compared.get("Cultivated", 0) * 0.2
        + compared.get("Undeveloped", 0) * 0.2, abs=0.05)
    report = storage.read_bytes(os.path.join(change_url(root, name, 2010, 2016),
                                             "report.md")).decode()
    assert (f"**{s['newly_developed']} tiles newly developed, about {e['expected']:g} of them "
            f"expected from model error alone (95% interval {e['low']}-{e['high']})**") in report
    assert f"on its held-out test counties ({name}, 300 tiles): accuracy 0.800" in report
    assert "This county is one of the model's test counties (held out)." in report


def test_a_real_county_scored_by_a_synthetic_trained_model_says_so_first(
        tmp_path, change_root, change_kit):
    root = _root(tmp_path, change_root, change_kit)
    name = change_root.county.name
    for year in YEARS:  # the same county, now real imagery
        change_kit.write_manifest(root, name, year,
                                  change_root.manifests[year].assign(synthetic=False))
    _evaluation(root, name, "train", synthetic=True)
    s = run_change(root, name, 2010, 2016, embeddings=False).summary
    assert next(iter(s)) == "caveat"
    assert "trained on synthetic imagery only" in s["caveat"]
    report = storage.read_bytes(os.path.join(change_url(root, name, 2010, 2016),
                                             "report.md")).decode()
    assert report.splitlines()[0] == f"> **Caution:** {s['caveat']}"
    assert "one of the model's training counties: not a held-out figure" in report
    _evaluation(root, name, "train", synthetic=False)
    assert "caveat" not in run_change(root, name, 2010, 2016, embeddings=False).summary


def test_a_real_county_caveat_quotes_the_reviewed_real_figure(tmp_path, change_root,
                                                              change_kit):
    root = _root(tmp_path, change_root, change_kit)
    name = change_root.county.name
    for year in YEARS:  # the same county, now real imagery
        change_kit.write_manifest(root, name, year,
                                  change_root.manifests[year].assign(synthetic=False))
    record = _evaluation(root, name, "train", synthetic=False)
    record["metrics_reviewed"] = {"accuracy": 0.75, "tiles": 24, "counties": ["stutsman-nd"],
                                  "measured_classes": ["Cultivated", "Herbaceous", "Water"],
                                  "others_synthetic": True}
    from landuse.models.tracking import evaluation_url, models_root

    storage.write_bytes(evaluation_url(models_root(root), "labels@1"),
                        json.dumps(record).encode())
    s = run_change(root, name, 2010, 2016, embeddings=False).summary
    assert next(iter(s)) == "caveat"
    assert s["caveat"] == (
        "Model labels@1 was measured on 24 reviewed real test tiles of stutsman-nd (3 classes: "
        "Cultivated, Herbaceous, Water): accuracy 0.75; its other figures come from synthetic "
        "counties.")
    assert "never seen real land" not in s["caveat"]
    report = storage.read_bytes(os.path.join(change_url(root, name, 2010, 2016),
                                             "report.md")).decode()
    assert report.splitlines()[0] == f"> **Caution:** {s['caveat']}"
