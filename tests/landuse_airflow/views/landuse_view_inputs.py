"""Inputs for the Land use view's tests: a synthetic county tiled for 2010 and 2016 with
'predictions' equal to its NLCD labels, under a local or an ``abfs://`` root."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from landuse import labels, storage

COUNTY = "synthetic-county-1"


def tile_and_predict(root: str, synthetic: Path, county_name: str = COUNTY,
                     chips: str = "all") -> None:
    """Tile ``county_name`` for 2010 and 2016 under ``root`` and write predictions that
    equal the labels (so the change found is the labels' planted change); ``chips`` says
    which tiles get an image (see :class:`landuse.tiling.TilingConfig`)."""
    from landuse import counties
    from landuse.scoring.predict import PREDICTION_SCHEMA, to_table
    from landuse.scoring.spark import predictions_url
    from landuse.tiling import TilingConfig, build_county

    county = counties.load_registry(str(synthetic / "counties.json"))[county_name]
    config = TilingConfig(tile_px=64, chips=chips)
    for result in build_county(county, [2010, 2016], root, config):
        m = storage.read_parquet(result.manifest_url).to_pandas()
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
        storage.write_parquet(predictions_url(storage.join(root, "predictions"), county.name,
                                              result.year), to_table(frame))


def tiny_bundle(folder: Path, name: str, seed: int) -> Path:
    """A small imported ONNX model over the project's classes (channel means -> linear ->
    softmax), as a local bundle folder."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from landuse.models.importer import import_onnx
    from landuse.models.preprocessing import PreprocessSpec

    n = len(labels.CLASSES)
    w = np.random.default_rng(seed).normal(0, 0.05, (3, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)],
        name, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 64, 64, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", n])],
        initializer=[numpy_helper.from_array(w, "w")])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)],
                                ir_version=8), str(folder / f"{name}.onnx"))
    return import_onnx(folder / f"{name}.onnx", folder / name, classes=list(labels.CLASSES),
                       preprocessing=PreprocessSpec(input_size=64), name=name).path


def track_training(root: str, dag_run_id: str, work: Path) -> dict[str, object]:
    """What a ``landuse_training`` run leaves behind, made with the library's own tracking
    code: two candidates published under the run's folder and logged to MLflow (metrics and
    confusion matrix), the better one promoted (decision tagged on its run), and the
    champion's test evaluation. Returns the champion pointer."""
    import json

    import numpy as np

    from landuse.models import metrics
    from landuse.models.bundle import load_bundle, publish_bundle
    from landuse.models.tracking import (
        evaluation_url,
        log_candidate,
        models_root,
        promote_best,
    )
    from landuse.models.training import run_folder

    rng = np.random.default_rng(0)
    truth = list(rng.choice(labels.CLASSES, 120))
    candidates = []
    for seed, (name, right) in enumerate([("squeezenet-head", 0.7), ("squeezenet-logreg", 0.85)]):
        local = tiny_bundle(work / "bundles", name, seed)
        predicted = [t if rng.random() < right else str(rng.choice(labels.CLASSES))
                     for t in truth]
        meta = json.loads((local / "bundle.json").read_text())
        meta.update(name=name, backbone="squeezenet", method=name.split("-")[1],
                    metrics=metrics.report(truth, predicted, list(labels.CLASSES)))
        (local / "bundle.json").write_text(json.dumps(meta))
        bundle = load_bundle(local)
        url = publish_bundle(bundle, storage.join(run_folder(models_root(root), dag_run_id),
                                                  name))
        candidates.append({"bundle": url, "run_id": log_candidate(bundle, bundle_url=url)})
    champion = promote_best(candidates, models_root(root))
    test_truth = list(rng.choice(labels.CLASSES, 60))
    test_pred = [t if rng.random() < 0.8 else str(rng.choice(labels.CLASSES)) for t in test_truth]
    evaluation = {"model_id": champion["model_id"],
                  "split_url": storage.join(root, "naip", "dataset", "split.parquet"),
                  "trained_on_synthetic": True,
                  "metrics": {**metrics.report(test_truth, test_pred, list(labels.CLASSES)),
                              "counties": ["synthetic-county-2"]}}
    storage.write_bytes(evaluation_url(models_root(root), champion["model_id"]),
                        json.dumps(evaluation).encode())
    return dict(champion)
