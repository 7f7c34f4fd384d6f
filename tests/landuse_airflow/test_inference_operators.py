"""The in-process inference operators and the bundle hook, executed for real on tiny bundles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTerminated

from landuse.labels import CLASSES
from landuse.models.bundle import BundleError, load_bundle
from landuse.models.preprocessing import to_tensor
from landuse_airflow.hooks.bundle import ModelBundleHook
from landuse_airflow.operators.inference import (
    BundleInferenceOperator,
    KerasInferenceOperator,
    OnnxInferenceOperator,
    TFLiteInferenceOperator,
)

OPERATORS = (OnnxInferenceOperator, KerasInferenceOperator, TFLiteInferenceOperator)
PROBS = [f"p_{c}" for c in CLASSES]


def test_three_frameworks_give_the_same_predictions(
    keras_bundle: Any, tiles: Any, tmp_path: Path
) -> None:
    spec = load_bundle(keras_bundle.path).spec.preprocessing
    reference = np.asarray(keras_bundle.model(to_tensor(tiles.pixels, spec), training=False))
    results = {}
    for operator in OPERATORS:
        out = tmp_path / f"{operator.framework}.parquet"
        op = operator(task_id=f"score_{operator.framework}", source=str(tiles.manifest),
                      bundle_path=str(keras_bundle.path), output_url=str(out), batch_size=5)
        summary = op.execute(context={})
        assert summary["tiles"] == len(tiles.frame) and summary["errors"] == 0
        assert summary["framework"] == operator.framework
        assert summary["output_url"] == str(out)
        assert summary["model_id"].startswith("tiny-cnn@")
        # Labelled tiles: the accuracy report comes along, counted over every tile.
        assert summary["report"]["tiles"] == len(tiles.frame)
        frame = pd.read_parquet(out)
        assert list(frame["tile_id"]) == list(tiles.frame["tile_id"])  # order kept
        assert set(frame["county"]) == {"test-county"} and set(frame["year"]) == {2016}
        results[operator.framework] = frame
    for framework, frame in results.items():
        np.testing.assert_allclose(frame[PROBS].to_numpy(), reference, atol=1e-5,
                                   err_msg=framework)
        assert list(frame["predicted"]) == [CLASSES[i] for i in reference.argmax(axis=1)]
    # A model that gave one answer for everything would make the comparison meaningless:
    # the tiles' probabilities must differ by far more than the tolerance above.
    assert np.ptp(reference, axis=0).max() > 1e-3


def test_corrupt_png_becomes_an_error_row(
    onnx_bundle: Path, onnx_reference: Callable[[np.ndarray], np.ndarray], tiles: Any,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "tiles"
    folder.mkdir()
    for i in range(3):
        (folder / f"good-{i}.png").write_bytes(Path(tiles.frame["image_url"][i]).read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    out = tmp_path / "predictions.parquet"
    op = OnnxInferenceOperator(task_id="score", source=str(folder),
                               bundle_path=str(onnx_bundle), output_url=str(out), batch_size=2)
    summary = op.execute(context={})
    assert summary["tiles"] == 4 and summary["errors"] == 1 and summary["scored"] == 3
    assert summary["report"] is None  # a folder of PNGs has no labels
    frame = pd.read_parquet(out).set_index("tile_id")
    broken = frame.loc["broken"]
    assert "broken.png" in broken["error"] and "not a readable image" in broken["error"]
    assert pd.isna(broken["predicted"]) and broken[PROBS].isna().all()
    good = frame.loc[[f"good-{i}" for i in range(3)]]
    assert good["error"].isna().all()
    np.testing.assert_allclose(good[PROBS].to_numpy(), onnx_reference(tiles.pixels[:3]),
                               atol=1e-5)


def test_template_fields_are_rendered_before_the_hook_is_built(
    onnx_bundle: Path, tiles: Any, tmp_path: Path
) -> None:
    op = OnnxInferenceOperator(
        task_id="score",
        source="{{ params.tiles }}/manifest.parquet",
        bundle_path="{{ params.bundle }}",
        output_url="{{ params.out }}/{{ ds }}/predictions.parquet",
        batch_size="{{ params.batch }}",
    )
    assert tuple(op.template_fields) == ("source", "bundle_path", "output_url", "batch_size")
    context = {"params": {"tiles": str(tiles.folder), "bundle": str(onnx_bundle),
                          "out": str(tmp_path), "batch": 3}, "ds": "2024-05-01"}
    op.render_template_fields(context)  # type: ignore[arg-type]
    assert op.source == str(tiles.manifest)
    assert op.bundle_path == str(onnx_bundle)
    assert op.output_url == f"{tmp_path}/2024-05-01/predictions.parquet"
    summary = op.execute(context={})
    assert op.batch_size == 3
    assert op.hook.bundle_path == str(onnx_bundle)
    assert summary["tiles"] == len(tiles.frame)
    assert Path(op.output_url).is_file()


@pytest.mark.parametrize("kill_in_batch", [1, 3])  # 12 tiles in batches of 4: first, last
def test_on_kill_stops_between_batches_and_writes_nothing(
    onnx_bundle: Path, tiles: Any, tmp_path: Path, kill_in_batch: int
) -> None:
    out = tmp_path / "predictions.parquet"
    op = OnnxInferenceOperator(task_id="score", source=str(tiles.manifest),
                               bundle_path=str(onnx_bundle), output_url=str(out), batch_size=4)
    runner = op.hook.get_runner("onnx")
    predict = runner.predict
    calls = []

    def killed_mid_batch(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == kill_in_batch:
            op.on_kill()  # as the task runner's SIGTERM handler would, mid-batch
        return predict(batch)

    runner.predict = killed_mid_batch  # type: ignore[method-assign]
    done = 4 * kill_in_batch
    with pytest.raises(AirflowTaskTerminated, match=f"stopped after {done} of 12 tiles"):
        op.execute(context={})
    assert calls == [4] * kill_in_batch  # the batch in flight finished; no further batch began
    assert not out.exists()  # not even when every batch had been scored


def test_bad_input_fails_without_retry(onnx_bundle: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    op = OnnxInferenceOperator(task_id="score", source=str(empty), bundle_path=str(onnx_bundle),
                               output_url=str(tmp_path / "p.parquet"))
    with pytest.raises(AirflowFailException, match="nothing to score"):
        op.execute(context={})
    # The hand-built bundle has no Keras model: a clear, non-retried failure.
    op = KerasInferenceOperator(task_id="score_keras", source=str(empty),
                                bundle_path=str(onnx_bundle), output_url=str(tmp_path / "k"))
    with pytest.raises(AirflowFailException):
        op.execute(context={})


def test_hook_caches_bundle_and_runners(onnx_bundle: Path) -> None:
    hook = ModelBundleHook(onnx_bundle)
    assert hook.get_conn() is hook.bundle
    runner = hook.get_runner("onnx")
    assert hook.get_runner("onnx") is runner and runner.bundle is hook.bundle
    with pytest.raises(BundleError, match="unknown framework"):
        hook.get_runner("torch")
    with pytest.raises(BundleError, match="no keras model"):
        hook.get_runner("keras")
    with pytest.raises(BundleError, match="no onnx-int8 model"):
        hook.get_runner("onnx-int8")


def test_base_operator_needs_a_framework_and_a_sane_batch(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="base class"):
        BundleInferenceOperator(task_id="x", source="s", bundle_path="b", output_url="o")
    with pytest.raises(ValueError, match="batch_size"):
        OnnxInferenceOperator(task_id="x", source="s", bundle_path="b", output_url="o",
                              batch_size=0)
    # A templated batch size is checked once rendered, before anything is read.
    op = OnnxInferenceOperator(task_id="x", source="s", bundle_path="b", output_url="o",
                               batch_size="{{ params.batch_size }}")
    for rendered in ("0", "2.5", "many"):
        op.batch_size = rendered
        with pytest.raises(AirflowFailException, match="batch_size"):
            op.execute(context={})
