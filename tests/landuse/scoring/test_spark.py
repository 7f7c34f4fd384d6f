"""Scoring on Spark local[2]: one committed file per county-year, one row per tile."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from landuse.models.bundle import BundleError, load_bundle
from landuse.scoring.spark import (
    Task,
    _commit,
    default_partitions,
    group_tasks,
    plan_tasks,
    predictions_url,
    score_on_spark,
    score_task,
    task_rows,
)
from landuse.tiling import export_chips


@pytest.fixture(scope="module")
def spark():
    from landuse.spark import local_spark

    session = local_spark("landuse-scoring-tests")
    yield session
    session.stop()


def test_scores_counties_and_commits_one_file_per_county_year(spark, tiled, bundle, tmp_path):
    source = str(tiled / "naip" / "*" / "*" / "manifest.parquet")
    out = str(tmp_path / "predictions")
    result = score_on_spark(spark, source, bundle, out, batch_size=16, partitions=5)
    manifests = pd.concat(pd.read_parquet(p) for p in tiled.glob("naip/*/*/manifest.parquet"))
    expected = manifests[manifests["status"] != "empty"]  # every tile with imagery, chip or not
    assert manifests["image_url"].notna().sum() < len(expected)
    assert result.tiles == len(expected) and result.errors == 0
    assert set(result.outputs) == {(c, y) for c in ("synthetic-county-1", "synthetic-county-2")
                                   for y in (2010, 2016)}
    for (county, year), url in result.outputs.items():
        assert url == predictions_url(out, county, year)
        part = pd.read_parquet(url)
        tiles = expected[(expected["county"] == county) & (expected["year"] == year)]
        assert sorted(part["tile_id"]) == sorted(tiles["tile_id"])  # exactly one row per tile
    assert result.report is not None and result.report["tiles"] > 0
    assert not (tmp_path / "predictions" / "_staging").exists() or not any(
        (tmp_path / "predictions" / "_staging").iterdir())  # staged parts are cleaned up


def test_rerun_leaves_exactly_one_row_per_tile(spark, tiled, bundle, tmp_path):
    source = str(tiled / "naip" / "synthetic-county-1" / "2010" / "manifest.parquet")
    out = str(tmp_path / "predictions")
    first = score_on_spark(spark, source, bundle, out)
    again = score_on_spark(spark, source, bundle, out, partitions=3)
    url = first.outputs[("synthetic-county-1", 2010)]
    assert again.outputs[("synthetic-county-1", 2010)] == url
    part = pd.read_parquet(url)
    assert part["tile_id"].is_unique and len(part) == first.tiles


def test_corrupt_scene_or_chip_is_an_error_row_not_a_failed_job(spark, tiled, bundle, tmp_path):
    manifest = pd.read_parquet(tiled / "naip" / "synthetic-county-2" / "2016" / "manifest.parquet")
    manifest = manifest[manifest["status"] != "empty"].head(12).copy()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"garbage")
    manifest.loc[manifest.index[0], "scene_url"] = str(broken)
    source = tmp_path / "manifest.parquet"
    manifest.to_parquet(source)
    result = score_on_spark(spark, str(source), bundle, str(tmp_path / "out"))
    part = pd.read_parquet(result.outputs[("synthetic-county-2", 2016)])
    assert len(part) == 12 and result.errors == 1
    assert "broken.tif" in part.set_index("tile_id").loc[manifest["tile_id"].iloc[0], "error"]
    # A manifest of chips alone (no scenes) is still scoreable: the chip is read.
    listed = export_chips(str(tiled / "naip" / "synthetic-county-2" / "2016" / "manifest.parquet"),
                          str(tmp_path / "chips"))
    chips = pd.read_parquet(listed).head(12)[["tile_id", "county", "year", "image_url"]]
    chips.loc[chips.index[0], "image_url"] = str(broken)
    chips.to_parquet(tmp_path / "chips.parquet")
    again = score_on_spark(spark, str(tmp_path / "chips.parquet"), bundle, str(tmp_path / "c"))
    assert again.tiles == len(chips) and again.errors == 1


def test_tasks_hold_neighbouring_tiles_of_one_scene_and_cover_each_tile_once(tiled):
    source = str(tiled / "naip" / "*" / "*" / "manifest.parquet")
    tasks = plan_tasks(source, tiles_per_task=7)
    seen: list[str] = []
    for task in tasks:
        rows = task_rows(task)
        assert len(rows) <= 7 and set(rows["scene_url"]) == {task.scene}
        seen += [f"{task.manifest}|{t}" for t in rows["tile_id"]]
    manifests = {str(p): pd.read_parquet(p) for p in tiled.glob("naip/*/*/manifest.parquet")}
    expected = [f"{url}|{t}" for url, m in manifests.items()
                for t in m.loc[m["status"] != "empty", "tile_id"]]
    assert sorted(seen) == sorted(expected)  # every tile with imagery, exactly once


def test_a_worker_reads_each_manifest_once_per_job(tiled, monkeypatch):
    """A county's tasks each want one scene's rows: reading the whole manifest per task
    would grow with the square of the county."""
    from landuse.scoring import spark as scoring_spark

    reads: list[str] = []
    read = scoring_spark._read_manifest
    monkeypatch.setattr(scoring_spark, "_read_manifest",
                        lambda url, columns=None: reads.append(url) or read(url, columns))
    source = str(tiled / "naip" / "synthetic-county-1" / "2016" / "manifest.parquet")
    tasks = plan_tasks(source, tiles_per_task=7)
    reads.clear()
    kept = [task_rows(t, job="job-1") for t in tasks]
    assert len(tasks) > 2 and reads == [source]
    for task, rows in zip(tasks, kept, strict=True):  # the same rows as a fresh read
        pd.testing.assert_frame_equal(rows, task_rows(task))
    reads.clear()
    task_rows(tasks[0], job="job-2")  # another job reads again: the manifest may be new
    assert reads == [source]
    gone = dataclasses.replace(tasks[0], scene="s3://nowhere/gone.tif")  # a rewritten manifest
    assert task_rows(gone, job="job-2").empty


def test_a_speculative_twin_cannot_double_a_row(tiled, bundle, tmp_path):
    """Two attempts of one task stage the same part (named by the task); the commit reads it
    once: exactly one row per tile."""
    from landuse.models.runners import OnnxRunner

    task = plan_tasks(str(tiled / "naip" / "synthetic-county-1" / "2016" / "manifest.parquet"))[0]
    runner = OnnxRunner(load_bundle(bundle))
    staging = str(tmp_path / "out" / "_staging" / "run")
    first = score_task(task, runner, 16, staging)
    twin = score_task(task, runner, 16, staging)
    assert [s["url"] for s in first] == [s["url"] for s in twin]
    outputs = _commit(first + twin, str(tmp_path / "out"))
    part = pd.read_parquet(outputs[("synthetic-county-1", 2016)])
    assert part["tile_id"].is_unique and len(part) == len(task_rows(task))


def test_invalid_bundle_fails_on_the_driver(spark, tiled, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        score_on_spark(spark, str(tiled / "naip" / "*" / "*" / "manifest.parquet"),
                       tmp_path / "empty", str(tmp_path / "out"))


def test_the_int8_form_scores_when_asked_and_names_itself(spark, tiled, bundle, tmp_path):
    import shutil

    import numpy as np

    from landuse.models.quantize import add_int8
    from landuse.tiles import read_tiles

    source = str(tiled / "naip" / "synthetic-county-1" / "2016" / "manifest.parquet")
    with pytest.raises(BundleError, match="no onnx-int8 model"):  # on the driver, at once
        score_on_spark(spark, source, bundle, str(tmp_path / "none"), framework="onnx-int8")

    manifest = pd.read_parquet(source)
    labelled = manifest.dropna(subset=["label"]).iloc[:64]
    tiles = read_tiles(labelled, load_bundle(bundle).spec.preprocessing)
    shutil.copytree(bundle, tmp_path / "int8")  # the fixture's bundle is shared
    int8 = add_int8(load_bundle(tmp_path / "int8"), tiles[:32], tiles, list(labelled["label"]),
                    force=True)  # scored in int8 whether or not it wins on this CPU
    fp32 = score_on_spark(spark, source, int8.path, str(tmp_path / "fp32"))
    q = score_on_spark(spark, source, int8.path, str(tmp_path / "q"), framework="onnx-int8")
    assert fp32.model_id == int8.model_id and q.model_id == f"{int8.model_id}+int8"
    a = pd.read_parquet(fp32.outputs[("synthetic-county-1", 2016)]).set_index("tile_id")
    b = pd.read_parquet(q.outputs[("synthetic-county-1", 2016)]).set_index("tile_id")
    assert set(b["model_id"]) == {q.model_id} and sorted(a.index) == sorted(b.index)
    b = b.loc[a.index]
    assert (a["predicted"] == b["predicted"]).mean() >= 0.9  # the same calls, nearly
    assert np.abs(a["confidence"] - b["confidence"]).max() < 0.1


def test_tiles_of_another_size_than_the_model_are_refused(spark, tiled, onnx_kit, tmp_path):
    from landuse.models.preprocessing import PreprocessSpec

    folder = onnx_kit.bundle(tmp_path / "b224", PreprocessSpec(input_size=224),
                             ("Developed", "Forest", "Shrub"))
    with pytest.raises(ValueError, match=r"64x64 px but bundle .* expects 224x224"):
        score_on_spark(spark, str(tiled / "naip" / "*" / "2010" / "manifest.parquet"), folder,
                       str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing published


def test_the_driver_never_holds_the_tiles_or_the_predictions(spark, tiled, bundle, tmp_path,
                                                             monkeypatch):
    """The driver plans from the scene column and commits part by part: no DataFrame of
    the tiles built on the driver, no predictions collected to it, no manifest loaded."""
    from pyspark.sql import DataFrame, SparkSession

    def refuse(*args, **kwargs):
        raise AssertionError("the driver must not hold every tile or prediction")

    monkeypatch.setattr(SparkSession, "createDataFrame", refuse)
    monkeypatch.setattr(DataFrame, "toPandas", refuse)
    monkeypatch.setattr("landuse.scoring.spark.load_source", refuse)
    source = str(tiled / "naip" / "*" / "*" / "manifest.parquet")
    result = score_on_spark(spark, source, bundle, str(tmp_path / "out"), batch_size=16)
    assert result.tiles > 0 and result.errors == 0


def test_tasks_are_grouped_into_even_runs_that_keep_a_manifest_together():
    tasks = [Task(f"m{m}.parquet", f"scene-{m}-{s}.tif", 0, 1, 304) for m in range(3)
             for s in range(10)] + [Task("m1.parquet", "scene-1-x.tif", 0, 1, 40)]
    groups = group_tasks(sorted(tasks, key=lambda t: -t.tiles), 8)
    assert sorted((t for g in groups for t in g), key=repr) == sorted(tasks, key=repr)
    sizes = [sum(t.tiles for t in g) for g in groups]
    assert len(groups) == 8 and sizes == sorted(sizes, reverse=True)
    assert max(sizes) - min(sizes) < 2 * 304  # each cut overshoots by less than a task
    for group in groups:  # consecutive: a run spans at most two manifests
        assert len({t.manifest for t in group}) <= 2
        assert [t.scene for t in group] == sorted(t.scene for t in group)
    assert group_tasks(tasks[:3], 8) == [[t] for t in tasks[:3]]  # never more runs than tasks


def test_default_partitions_amortise_task_overhead_and_keep_cores_busy():
    county = [Task("m.parquet", f"s{i}.tif", 0, 1, 304) for i in range(432)]  # ~131k tiles
    assert default_partitions(county, 2) == 65  # ~2,000 tiles a Spark task
    assert default_partitions(county[:20], 2) == 8  # small job: four per core
    assert default_partitions(county[:20], 16) == 64
