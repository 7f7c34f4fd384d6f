"""Featurize and classify on Spark: the backbone as ONNX, features, bundles, errors.

Covers ``landuse.models.backbone_onnx``, ``landuse.models.spark_features`` and the route in
``landuse.models.featurize`` together, since they share the expensive fixtures below (the
classifier pieces have their own quick files: test_spark_classifiers.py, test_onnx_head.py).
One local[2] Spark session serves the file. The dataset is real library output (synthetic
counties -> tiles -> county-held-out split) at 56 m tiles, so two 896 m counties hold
enough tiles of every class (15 per class to train, 6 to validate) for a meaningful
accuracy; the backbone runs at 64 px, the tiles' own size, to keep the file fast.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from landuse import labels, storage
from landuse.models import featurize as route
from landuse.models.backbone_onnx import export_backbone_onnx
from landuse.models.bundle import load_bundle
from landuse.models.preprocessing import ImageError, PreprocessSpec
from landuse.models.runners import OnnxRunner
from landuse.models.spark_features import featurize
from landuse.tiles import read_tiles

INPUT_SIZE = 64
VAL_COUNTY = "synthetic-county-1"


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A local[2] session configured as the project runs it."""
    from landuse.spark import local_spark

    session = local_spark("landuse-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def split_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two synthetic counties, 2016, tiled at 56 m / 64 px; county 1 validates."""
    from landuse.counties import load_registry
    from landuse.splits import build_dataset
    from landuse.synthetic import make_synthetic
    from landuse.tiling import TilingConfig, build_county

    out = tmp_path_factory.mktemp("featurize")
    make_synthetic(
        str(out / "synthetic"),
        counties=2,
        years=(2016,),
        size_m=896,
        res_m=4.0,
        parcel_m=300.0,
        seed=7,
    )
    registry = load_registry(str(out / "synthetic" / "counties.json"))
    config = TilingConfig(tile_size_m=56.0, tile_px=64, label_cells=8, purity_threshold=0.9)
    manifests = [
        r.manifest_url
        for county in registry.values()
        for r in build_county(county, [2016], str(out / "root"), config)
    ]
    dataset = build_dataset(manifests, str(out / "dataset"), val_counties=[VAL_COUNTY], seed=0)
    split = pd.read_parquet(dataset.url)
    # The fixture's contract: all seven classes (Water too), balanced, on both sides.
    assert split.groupby(["split", "label"]).size().unstack().shape == (2, len(labels.CLASSES))
    return dataset.url


@pytest.fixture(scope="module")
def split(split_url: str) -> pd.DataFrame:
    return pd.read_parquet(split_url)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreprocessSpec]:
    """SqueezeNet with its shipped ImageNet weights, as ONNX."""
    dest = tmp_path_factory.mktemp("backbone") / "squeezenet.onnx"
    return export_backbone_onnx("squeezenet", dest, input_size=INPUT_SIZE)


@pytest.fixture(scope="module")
def features(spark: Any, split_url: str, backbone: tuple[Path, PreprocessSpec]) -> Iterator[Any]:
    frame = featurize(spark, split_url, *backbone, batch_size=16)
    yield frame
    frame.unpersist()


@pytest.fixture(scope="module")
def trained(
    spark: Any, split_url: str, tmp_path_factory: pytest.TempPathFactory
) -> list[route.ClassifierResult]:
    """Both methods trained end to end; bundles under a fresh folder."""
    dest = tmp_path_factory.mktemp("bundles")
    return route.featurize_and_classify(spark, split_url, dest, input_size=INPUT_SIZE)


def _rows(frame: Any, split_name: str) -> pd.DataFrame:
    """One side of the featurized split in a fixed order (features as DenseVector)."""
    return frame.filter(frame.split == split_name).orderBy("row").toPandas()


# --- backbone and features ------------------------------------------------------------------


def test_backbone_onnx_has_named_input_and_pooled_output(backbone):
    import onnx

    path, spec = backbone
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["features"]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == [512]
    assert spec.channel_order == "BGR" and spec.input_size == INPUT_SIZE


def test_features_are_pooled_vectors_of_every_tile(features, split):
    from pyspark.ml.linalg import DenseVector, VectorUDT

    assert features.columns == ["row", "tile_id", "label", "split", "features"]
    assert isinstance(features.schema["features"].dataType, VectorUDT)
    rows = features.orderBy("row").toPandas()
    expected = split
    assert len(rows) == len(split)
    assert list(rows["row"]) == list(range(len(split)))
    assert (rows["label"] == expected["label"]).all()
    assert (rows["split"] == expected["split"]).all()
    assert (rows["tile_id"] == expected["tile_id"]).all()
    assert all(isinstance(v, DenseVector) for v in rows["features"])
    matrix = np.stack([v.toArray() for v in rows["features"]])
    assert matrix.shape == (len(split), 512)
    assert np.isfinite(matrix).all() and (matrix >= 0).all()  # ReLU, then average pooling
    assert matrix.std(axis=0).max() > 0  # tiles differ


def test_features_equal_the_backbone_on_the_shared_preprocessing(features, backbone, split):
    """Spark's features are exactly what the backbone gives for read_tiles + to_tensor."""
    import onnxruntime as ort

    from landuse.models.preprocessing import to_tensor

    path, spec = backbone
    rows = _rows(features, "validation").head(8)
    x = to_tensor(read_tiles(split.iloc[rows["row"]], spec), spec)
    expected = ort.InferenceSession(str(path)).run(["features"], {"image": x})[0]
    got = np.stack([v.toArray() for v in rows["features"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_each_python_worker_keeps_one_onnx_session(spark, features, backbone):
    """Sessions survive between tasks (module-level cache by SHA-256), threads pinned to 1."""
    sha = hashlib.sha256(backbone[0].read_bytes()).hexdigest()

    def probe(batches):
        import os

        import pandas as pd

        from landuse.models import spark_features

        for _ in batches:
            yield pd.DataFrame({
                "cached": [sha in spark_features._SESSIONS],
                "omp": [os.environ["OMP_NUM_THREADS"]],
            })

    found = spark.range(4, numPartitions=4).mapInPandas(probe, "cached boolean, omp string")
    found = found.toPandas()
    assert found["cached"].any()
    assert (found["omp"] == "1").all()


def test_a_corrupt_chip_fails_naming_its_url(spark, split, backbone, tmp_path):
    bad = tmp_path / "corrupt-tile.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # a PNG signature, then garbage
    broken = split.copy()
    broken.loc[3, ["scene_url", "image_url"]] = [None, str(bad)]  # a tile only a chip holds
    url = str(tmp_path / "split.parquet")
    broken.to_parquet(url)
    with pytest.raises(ImageError, match=re.escape(str(bad))):
        featurize(spark, url, *backbone)


def test_a_missing_scene_fails_naming_it(spark, split, backbone, tmp_path):
    broken = split.copy()
    gone = str(tmp_path / "no-such-scene.tif")
    broken.loc[0, "scene_url"] = gone
    url = str(tmp_path / "split.parquet")
    broken.to_parquet(url)
    with pytest.raises(ImageError, match=re.escape(gone)):
        featurize(spark, url, *backbone)


def test_featurize_refuses_a_spec_the_model_does_not_take(spark, split_url, backbone):
    path, spec = backbone
    with pytest.raises(ValueError, match="input shape"):
        featurize(spark, split_url, path, spec.model_copy(update={"input_size": 96}))


# --- classifiers and bundles ----------------------------------------------------------------


def test_one_bundle_per_method_loads_and_describes_itself(trained, split_url):
    assert [r.bundle.spec.method for r in trained] == ["logreg", "random-forest"]
    split_sha = hashlib.sha256(storage.read_bytes(split_url)).hexdigest()
    for result in trained:
        bundle = load_bundle(result.bundle.path)
        spec = bundle.spec
        assert bundle.path.name == f"squeezenet-{spec.method}"
        assert spec.backbone == "squeezenet" and spec.formats == ("onnx",)
        assert (spec.onnx_input, spec.onnx_output) == ("image", "probabilities")
        assert spec.outputs_probabilities
        assert spec.preprocessing.channel_order == "BGR"
        assert spec.preprocessing.input_size == INPUT_SIZE
        # The seed's class order, restricted to the classes training saw (all six here).
        assert spec.classes == (
            "Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated", "Water"
        )
        assert spec.lineage.split_sha256 == split_sha
        assert spec.params["classifier"] and spec.params["route"] == "featurize-and-classify"
        assert not list(bundle.path.parent.glob(".featurize-*"))  # work folder cleaned up


def test_bundle_output_is_one_model_of_class_probabilities(trained):
    import onnx

    for result in trained:
        model = onnx.load(str(result.bundle.file("onnx")))
        assert [o.name for o in model.graph.output] == ["probabilities"]
        dims = model.graph.output[0].type.tensor_type.shape.dim
        assert dims[1].dim_value == len(result.bundle.spec.classes)


@pytest.mark.parametrize("split_name", ["validation", "train"])
def test_onnx_bundle_equals_spark_probabilities(trained, features, split, split_name):
    """The bundle, run as scoring runs it, reproduces Spark's probability column."""
    rows = _rows(features, split_name)
    tiles = read_tiles(split.iloc[rows["row"]], trained[0].bundle.spec.preprocessing)
    for result in trained:
        spark_rows = result.spark_model.transform(
            features.filter(features.split == split_name)
        ).orderBy("row")
        spark_probs = np.stack([v.toArray() for v in spark_rows.toPandas()["probability"]])
        onnx_probs = OnnxRunner(load_bundle(result.bundle.path)).predict(tiles)
        assert onnx_probs.shape == spark_probs.shape == (len(rows), len(labels.CLASSES))
        np.testing.assert_allclose(onnx_probs, spark_probs, rtol=0, atol=1e-4)
        np.testing.assert_allclose(onnx_probs.sum(axis=1), 1.0, atol=1e-5)


def test_validation_metrics_come_from_the_bundle(trained, split):
    val = split[split["split"] == "validation"]
    for result in trained:
        metrics = result.bundle.spec.metrics
        assert metrics == result.metrics
        assert metrics["tiles"] == len(val)
        assert metrics["classes"] == list(result.bundle.spec.classes)
        assert np.asarray(metrics["confusion"]).sum() == len(val)
        assert metrics["onnx_spark_max_abs_diff"] <= 1e-4
        # Six balanced classes: chance is 1/6. The synthetic classes are easy to tell apart.
        assert metrics["accuracy"] >= 0.6, (result.bundle.spec.method, metrics["accuracy"])
        assert "group_accuracy" in metrics
    assert trained[0].history["loss"]  # logistic regression's objective per iteration


# --- split errors (no Spark work: they fail before featurizing) -----------------------------


def _write_split(frame: pd.DataFrame, folder: Path) -> str:
    url = str(folder / "split.parquet")
    frame.to_parquet(url)
    return url


def test_a_single_training_class_is_refused(spark, split, tmp_path):
    one = split[(split["split"] == "validation") | (split["label"] == "Forest")]
    with pytest.raises(ValueError, match="one class"):
        route.featurize_and_classify(spark, _write_split(one, tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_validation_class_training_never_saw_is_refused(spark, split, tmp_path):
    partial = split[(split["split"] == "validation") | (split["label"] != "Shrub")]
    with pytest.raises(ValueError, match=r"validation holds \['Shrub'\]"):
        route.featurize_and_classify(spark, _write_split(partial, tmp_path), tmp_path / "out")


def test_unknown_methods_are_refused(spark, split_url, tmp_path):
    with pytest.raises(ValueError, match="unknown classifier methods"):
        route.featurize_and_classify(spark, split_url, tmp_path, methods=("svm",))


@pytest.mark.slow
def test_a_corrupt_tile_leaves_no_bundle(spark, split, tmp_path):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"not an image at all")
    broken = split.copy()
    broken.loc[len(broken) - 1, "scene_url"] = str(bad)
    url = _write_split(broken, tmp_path)
    with pytest.raises(ImageError, match=re.escape(str(bad))):
        route.featurize_and_classify(spark, url, tmp_path / "bundles", input_size=INPUT_SIZE)
    assert not list((tmp_path / "bundles").iterdir())


def test_the_route_module_still_exports_its_parts():
    """Callers import the route's pieces from ``landuse.models.featurize``; the split kept
    them there."""
    from landuse.models import backbone_onnx, onnx_head, spark_classifiers, spark_features

    assert route.featurize is spark_features.featurize
    assert route.export_backbone_onnx is backbone_onnx.export_backbone_onnx
    assert route.train_classifiers is spark_classifiers.train_classifiers
    assert route.append_classifier is onnx_head.append_classifier
    assert (route.INPUT, route.FEATURES, route.OUTPUT) == ("image", "features", "probabilities")
    assert all(hasattr(route, name) for name in route.__all__)
