"""large_image_scoring with dag.test(): a small GeoTIFF on Spark; bad input fails at plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = ["Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A 4-band NAIP-like GeoTIFF (UTM, 2 m) of colour blocks, and a PNG of it."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    rng = np.random.default_rng(5)
    rgbn = np.kron(rng.integers(0, 256, (4, 5, 4)), np.ones((40, 40, 1))).astype(np.uint8)
    folder = tmp_path_factory.mktemp("large-image")
    with rasterio.open(folder / "scene.tif", "w", driver="GTiff", width=200, height=160,
                       count=4, dtype="uint8", crs="EPSG:26914",
                       transform=from_origin(486_000, 5_209_000, 2.0, 2.0)) as dst:
        dst.write(rgbn.transpose(2, 0, 1))
    Image.fromarray(rgbn[..., :3]).save(folder / "scene.png")
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A six-class ONNX model on 32 px windows: channel means -> linear -> softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from landuse.models.importer import import_onnx
    from landuse.models.preprocessing import PreprocessSpec

    w = np.random.default_rng(0).normal(0, 2, (3, len(CLASSES))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 32, 32, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 6])],
        initializer=[numpy_helper.from_array(w, "w")])
    folder = tmp_path_factory.mktemp("windows-model")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8),
              str(folder / "tiny.onnx"))
    spec = PreprocessSpec(input_size=32, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0))
    return import_onnx(folder / "tiny.onnx", folder / "bundle", classes=CLASSES,
                       preprocessing=spec, name="tiny").path


def _run(conf: dict):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT / "dags" / "large_image_scoring.py")).get_dag(
        "large_image_scoring")
    return dag.test(run_conf=conf)


def _states(run) -> dict[str, tuple[str, int]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: (ti.state, ti.try_number)
                for ti in session.query(TaskInstance).filter_by(run_id=run.run_id)}


def test_scores_a_large_image_on_spark_into_a_georeferenced_map(airflow_db, images, bundle,
                                                                tmp_path):
    import rasterio

    run = _run({"image": str(images / "scene.tif"), "model": str(bundle),
                "storage_root": str(tmp_path), "threshold": 0.6,
                "detect_classes": ["Developed", "Forest", "Cultivated"]})
    assert run.state == "success"
    out = tmp_path / "windows" / "scene"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["windows"] == summary["scored"] == 9 * 11
    assert summary["spark_master"] == "local[2]" and summary["strips"] == 2
    assert summary["route"] == "fully-convolutional"
    assert set(summary["detections_per_class"]) <= {"Developed", "Forest", "Cultivated"}
    with rasterio.open(images / "scene.tif") as src, \
            rasterio.open(out / "probabilities.tif") as probs:
        assert probs.crs == src.crs and probs.count == 6
        assert probs.res == (32.0, 32.0)  # 16 px stride of 2 m pixels
        assert probs.bounds.left == src.bounds.left + 16 and probs.bounds.top == \
            src.bounds.top - 16  # the first cell is the first window's centre
    assert (out / "detections.geojson").is_file()


@pytest.mark.parametrize(
    ("conf", "message"),
    [({"window_size": 400}, "larger than image"),
     ({"stride": 40}, "larger than the 32 px window"),
     ({"geojson": "yes", "image": "png"}, "no georeferencing"),
     ({"route": "fully-convolutional", "window_size": 40, "stride": 20},
      "every 40 px window is resized")],
)
def test_bad_input_fails_at_plan_without_retries(airflow_db, images, bundle, tmp_path, conf,
                                                  message, capsys):
    conf = {"image": str(images / "scene.tif"), "model": str(bundle),
            "storage_root": str(tmp_path), "spark_master": "none", **conf}
    if conf["image"] == "png":
        conf["image"] = str(images / "scene.png")
    run = _run(conf)
    assert run.state == "failed"
    states = _states(run)
    assert states["plan"] == ("failed", 1)  # bad input is not retried
    assert states["score_windows"][0] == "upstream_failed"
    assert not (tmp_path / "windows").exists()
    assert message in "".join(capsys.readouterr())  # the task log names the problem


def test_png_in_process_without_geojson(airflow_db, images, bundle, tmp_path):
    run = _run({"image": str(images / "scene.png"), "model": str(bundle),
                "storage_root": str(tmp_path), "spark_master": "none", "window_size": 40,
                "stride": 20})
    assert run.state == "success"
    summary = json.loads((tmp_path / "windows" / "scene" / "summary.json").read_text())
    assert not summary["georeferenced"] and "detections.geojson" not in summary["outputs"]
    assert summary["grid"] == [7, 9] and summary["strips"] == 1
    assert summary["route"] == "per-window"  # 40 px windows, 32 px model: resized


def test_per_window_route_when_asked(airflow_db, images, bundle, tmp_path):
    run = _run({"image": str(images / "scene.tif"), "model": str(bundle),
                "storage_root": str(tmp_path), "spark_master": "none", "route": "per-window"})
    assert run.state == "success"
    summary = json.loads((tmp_path / "windows" / "scene" / "summary.json").read_text())
    assert (summary["route"], summary["route_reason"]) == ("per-window", "asked for")
    assert summary["windows"] == summary["scored"] == 9 * 11
