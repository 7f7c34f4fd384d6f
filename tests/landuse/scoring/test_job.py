"""The packaged Spark job (landuse.scoring.job): main() on local[2], exit codes, arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landuse.labels import CLASSES
from landuse.models.bundle import BundleSpec, load_bundle, write_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.scoring import job
from landuse.scoring.spark import predictions_url

SIZE = 32
SPEC = PreprocessSpec(input_size=SIZE, scale=1 / 255)
PROBS = [f"p_{c}" for c in CLASSES]
WEIGHTS = np.random.default_rng(3).normal(0, 4, (3, len(CLASSES))).astype(np.float32)
BIAS = np.random.default_rng(4).normal(0, 1, len(CLASSES)).astype(np.float32)


def expected(pixels: np.ndarray) -> np.ndarray:
    """The hand-built model's probabilities, in numpy."""
    logits = (pixels.astype(np.float64) / 255).mean(axis=(1, 2)) @ WEIGHTS + BIAS
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def job_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """softmax(channel means of x / 255 @ W + b) as ONNX (onnx.helper), in a valid bundle."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "job_test",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", len(CLASSES)])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    spec = BundleSpec(schema_version=1, name="job-test", classes=CLASSES, preprocessing=SPEC,
                      backbone="none", method="imported", formats=("onnx",),
                      onnx_input="image", onnx_output="probabilities")
    dest = tmp_path_factory.mktemp("job-bundle") / "bundle"
    write_bundle(dest, spec, lambda f: (f / "model.onnx").write_bytes(model.SerializeToString()))
    return dest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    """Ten labelled PNG tiles over two county-years, plus one corrupt tile."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("job-tiles")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 1, 1, 3)) + rng.integers(-30, 31, (10, SIZE, SIZE, 3))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    rows = []
    for i, tile in enumerate(pixels):
        url = folder / f"t{i}.png"
        Image.fromarray(tile).save(url)
        rows.append((f"t{i}", "county-a" if i < 6 else "county-b", 2010 if i % 2 else 2016,
                     str(url), CLASSES[i % len(CLASSES)]))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    rows.append(("bad", "county-a", 2016, str(folder / "bad.png"), "Forest"))
    frame = pd.DataFrame(rows, columns=["tile_id", "county", "year", "image_url", "label"])
    path = folder / "manifest.parquet"
    frame.to_parquet(path)
    return path, frame, pixels


@pytest.fixture(scope="module")
def spark_session() -> Iterator[None]:
    """main() starts (or reuses) the local session; stop it when the module is done."""
    yield
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def test_main_scores_on_local_spark_and_commits_each_county_year(
    spark_session: None, job_bundle: Path, manifest: tuple[Path, pd.DataFrame, np.ndarray],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    source, frame, pixels = manifest
    out = str(tmp_path / "out")
    status = job.main(["--source", str(source), "--bundle", str(job_bundle), "--out", out,
                       "--batch-size", "3", "--master", "local[2]"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tiles"] == 11 and summary["errors"] == 1
    assert summary["report"]["tiles"] == 10  # the corrupt tile is not counted
    keys = {(c, int(y)) for c, y in frame[["county", "year"]].itertuples(index=False)}
    assert set(summary["outputs"]) == {f"{c}/{y}" for c, y in keys}
    scored = pd.concat(pd.read_parquet(predictions_url(out, c, y)) for c, y in keys)
    assert sorted(scored["tile_id"]) == sorted(frame["tile_id"])
    assert "bad.png" in scored.set_index("tile_id").loc["bad", "error"]
    good = scored[scored["error"].isna()].set_index("tile_id").loc[[f"t{i}" for i in range(10)]]
    np.testing.assert_allclose(good[PROBS].to_numpy(), expected(pixels), atol=1e-5)
    assert list(good["model_id"].unique()) == [load_bundle(job_bundle).model_id]


def test_main_returns_2_on_bad_input(
    spark_session: None, job_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    status = job.main(["--source", str(empty), "--bundle", str(job_bundle), "--out",
                       str(tmp_path / "out"), "--master", "local[2]"])
    assert status == job.EXIT_BAD_INPUT
    assert "nothing to score" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_arguments_are_checked() -> None:
    args = job.parse_args(["--source", "s", "--bundle", "b", "--out", "o"])
    assert (args.framework, args.batch_size, args.threads, args.master) == ("onnx", 32, 1, None)
    for bad in (["--batch-size", "0"], ["--framework", "torch"]):
        with pytest.raises(SystemExit) as exit_info:
            job.parse_args(["--source", "s", "--bundle", "b", "--out", "o", *bad])
        assert exit_info.value.code == 2
