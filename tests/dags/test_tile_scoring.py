"""tile_scoring with dag.test(): tiles scored in the task by the operator of the chosen form."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from onnx_kit import write_onnx_bundle

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = ("Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, synthetic: Path) -> Path:
    """Synthetic county 1, 2016: a scene manifest (no chips)."""
    from landuse import counties
    from landuse.tiling import TilingConfig, build_county

    root = tmp_path_factory.mktemp("tile-scoring")
    county = counties.load_registry(str(synthetic / "counties.json"))["synthetic-county-1"]
    [built] = build_county(county, [2016], str(root), TilingConfig(tile_px=64))
    return Path(built.manifest_url)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, manifest: Path) -> dict[str, Path]:
    """A six-class ONNX bundle, and a copy with its int8 form."""
    from landuse.models.bundle import load_bundle
    from landuse.models.preprocessing import PreprocessSpec
    from landuse.models.quantize import add_int8
    from landuse.tiles import read_tiles

    folder = tmp_path_factory.mktemp("bundles")
    spec = PreprocessSpec(input_size=64, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0))
    fp32 = write_onnx_bundle(folder / "fp32", spec, CLASSES)
    shutil.copytree(fp32, folder / "int8")
    labelled = pd.read_parquet(manifest).dropna(subset=["label"]).head(48)
    tiles = read_tiles(labelled, spec)
    # forced: these tests score with the int8 form, whether or not it wins on this CPU
    add_int8(load_bundle(folder / "int8"), tiles[:24], tiles, list(labelled["label"]),
             force=True)
    return {"fp32": fp32, "int8": folder / "int8"}


def _run(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "tile_scoring.py")).get_dag("tile_scoring")
    return dag.test(run_conf=conf)


def _states(run) -> dict[str, tuple[str, int]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: (ti.state, ti.try_number)
                for ti in session.query(TaskInstance).filter_by(run_id=run.run_id)}


def test_each_form_scores_every_tile_in_the_task(airflow_db, manifest, bundles, tmp_path,
                                                 capsys):
    from landuse import storage
    from landuse.models.bundle import load_bundle

    written = {}
    for framework, bundle in (("onnx", bundles["fp32"]), ("onnx-int8", bundles["int8"])):
        run = _run({"source": str(manifest), "model": str(bundle), "framework": framework,
                    "storage_root": str(tmp_path), "batch_size": 7})
        assert run.state == "success"
        assert "batches of 7" in "".join(capsys.readouterr())  # the Param reached the task
        chosen = f"score_{framework.replace('-', '_')}"
        states = _states(run)
        assert states[chosen][0] == "success"
        assert {t for t, (s, _) in states.items() if s == "skipped"} == {
            "score_onnx", "score_onnx_int8", "score_keras", "score_tflite"} - {chosen}
        url = tmp_path / "tile_scoring" / storage.run_segment(run.run_id) / "predictions.parquet"
        written[framework] = pd.read_parquet(url).set_index("tile_id")

    tiles = pd.read_parquet(manifest)
    scored = tiles[tiles["status"] != "empty"]  # every tile with imagery, chip or not
    fp32, int8 = written["onnx"], written["onnx-int8"].loc[written["onnx"].index]
    assert sorted(fp32.index) == sorted(scored["tile_id"]) and fp32["error"].isna().all()
    model_id = load_bundle(bundles["int8"]).model_id
    assert set(fp32["model_id"]) == {model_id} and set(int8["model_id"]) == {f"{model_id}+int8"}
    assert (fp32["predicted"] == int8["predicted"]).mean() >= 0.9


def test_a_form_the_bundle_lacks_fails_at_once(airflow_db, manifest, bundles, tmp_path):
    run = _run({"source": str(manifest), "model": str(bundles["fp32"]),
                "framework": "onnx-int8", "storage_root": str(tmp_path)})
    assert run.state == "failed"
    states = _states(run)
    assert states["plan"] == ("failed", 1)  # bad input: no retry
    assert not (tmp_path / "tile_scoring").exists()


def test_a_source_outside_the_allowed_roots_is_refused(airflow_db, bundles, tmp_path):
    run = _run({"source": "/etc/landuse/manifest.parquet", "model": str(bundles["fp32"]),
                "storage_root": str(tmp_path)})
    assert run.state == "failed"
    assert _states(run)["plan"] == ("failed", 1)
