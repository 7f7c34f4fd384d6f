"""The int8 form of a bundle: made at training time, timed against fp32 and checked on the
validation tiles, kept only where it wins, used only when asked, and named apart in
predictions. The decision is tested with injected timings (this machine's timing decides
nothing here); one test times for real and checks only that the figures are recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landuse.models import quantize
from landuse.models.bundle import BundleError, load_bundle
from landuse.models.preprocessing import PreprocessSpec
from landuse.models.quantize import INT8, MIN_SPEEDUP, add_int8
from landuse.models.runners import OnnxRunner, open_runner
from landuse.tiles import read_tiles

CLASSES = ("Developed", "Forest", "Shrub")
SPEC = PreprocessSpec(input_size=64)


def _timer(speedup: float):  # type: ignore[no-untyped-def]
    """A timer that reports int8 at ``speedup`` times fp32's 100 tiles/s."""
    seen = []

    def timer(models: dict[str, Path], x: np.ndarray, input_name: str) -> dict[str, float]:
        seen.append((sorted(models), len(x), input_name))
        return {"onnx": 100.0, INT8: 100.0 * speedup}

    timer.seen = seen  # type: ignore[attr-defined]
    return timer


@pytest.fixture
def case(onnx_kit, tiny_dataset, tmp_path):  # type: ignore[no-untyped-def]
    """A fresh bundle, calibration tiles, check tiles and their labels."""
    weights, bias = onnx_kit.weights(len(CLASSES), seed=1)
    bundle = load_bundle(onnx_kit.bundle(tmp_path / "b", SPEC, CLASSES, weights=weights,
                                         bias=bias))
    val = tiny_dataset.validation
    tiles = read_tiles(val, SPEC)
    calibration = read_tiles(tiny_dataset.train.iloc[:16], SPEC)
    return bundle, calibration, tiles, list(val["label"])


def test_int8_form_is_kept_where_it_wins_and_used_only_when_asked(case):
    bundle, calibration, tiles, truth = case
    timer = _timer(2.0)
    out = add_int8(bundle, calibration, tiles, truth, timer=timer)
    assert INT8 in out.spec.formats and out.file(INT8).is_file()
    assert out.model_id == bundle.model_id  # model.onnx is untouched
    # both forms timed on the check tiles, at most TIMING_TILES of them
    assert timer.seen == [(["onnx", INT8], min(len(tiles), quantize.TIMING_TILES), "image")]
    fp32, q = OnnxRunner(out).predict(tiles), OnnxRunner(out, int8=True).predict(tiles)
    m = out.spec.metrics["int8"]
    assert m["tiles"] == len(tiles)
    assert m["agreement"] == round(float(np.mean(fp32.argmax(1) == q.argmax(1))), 4)
    assert m["agreement"] >= quantize.MIN_AGREEMENT and np.abs(fp32 - q).max() < 0.1
    assert m["kept"] is True and "reason" not in m and "forced" not in m
    assert (m["fp32_tiles_per_s"], m["int8_tiles_per_s"], m["speedup"]) == (100.0, 200.0, 2.0)
    assert (m["min_speedup"], m["min_agreement"]) == (MIN_SPEEDUP, quantize.MIN_AGREEMENT)
    assert m["cpu"] and isinstance(m["vnni"], list)
    assert OnnxRunner(out).model_id == bundle.model_id
    assert OnnxRunner(out, int8=True).model_id == f"{bundle.model_id}+int8"
    assert load_bundle(out.path).spec.formats.count(INT8) == 1

    # a model that cannot be quantized keeps its fp32 form and says why
    broken = add_int8(out, np.zeros((2, 8, 8, 5), np.uint8), tiles, truth, timer=timer)
    assert INT8 not in broken.spec.formats and not (broken.path / "model.int8.onnx").exists()
    m = broken.spec.metrics["int8"]
    assert m["error"] and m["kept"] is False and m["reason"].startswith("ONNX Runtime could")
    assert broken.model_id == bundle.model_id


def test_an_int8_form_that_is_not_faster_is_dropped_and_scoring_says_why(case):
    bundle, calibration, tiles, truth = case
    # just under the margin: faster, but not by enough to be told from noise
    out = add_int8(bundle, calibration, tiles, truth, timer=_timer(MIN_SPEEDUP - 0.01))
    assert INT8 not in out.spec.formats and not (out.path / "model.int8.onnx").exists()
    assert out.model_id == bundle.model_id
    m = load_bundle(out.path).spec.metrics["int8"]  # as written to bundle.json
    assert m["kept"] is False and m["reason"].startswith("not faster: int8 109.0 vs fp32 100.0")
    assert "disagrees" not in m["reason"]
    assert m["agreement"] >= quantize.MIN_AGREEMENT and m["accuracy"] is not None
    # asking for int8 scoring names the recorded reason (the same error every path raises)
    with pytest.raises(BundleError, match=r"no onnx-int8 model .*not kept when it was "
                                          r"built: not faster"):
        open_runner(load_bundle(out.path), INT8)

    # forced (a bundle built here for a VNNI scoring machine, a benchmark): kept, and the
    # failed check is still on record
    forced = add_int8(out, calibration, tiles, truth, timer=_timer(0.5), force=True)
    m = forced.spec.metrics["int8"]
    assert INT8 in forced.spec.formats and forced.file(INT8).is_file()
    assert m["kept"] is True and m["forced"] is True and "reason" not in m
    assert m["check_failed"].startswith("not faster")


def test_an_int8_form_that_disagrees_with_fp32_is_dropped_even_when_faster(case, monkeypatch):
    bundle, calibration, tiles, truth = case
    # no agreement reaches it, so the rule is tested without hunting for a model that
    # quantizes badly
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)
    out = add_int8(bundle, calibration, tiles, truth, timer=_timer(3.0))
    assert INT8 not in out.spec.formats
    m = out.spec.metrics["int8"]
    assert m["kept"] is False and m["speedup"] == 3.0 and m["min_agreement"] == 1.01
    assert m["reason"] == (f"disagrees with fp32: top-1 agreement {m['agreement']:.4f} on "
                           f"{len(tiles)} check tiles (needs 1.01)")


def test_real_timing_records_both_throughputs(case):
    """Timed on this machine: only that the figures are there, never which way it went."""
    bundle, calibration, tiles, truth = case
    out = add_int8(bundle, calibration, tiles, truth)
    m = out.spec.metrics["int8"]
    assert m["fp32_tiles_per_s"] > 0 and m["int8_tiles_per_s"] > 0 and m["speedup"] > 0
    assert m["timed_tiles"] == min(len(tiles), quantize.TIMING_TILES)
    assert isinstance(m["kept"], bool) and (INT8 in out.spec.formats) == m["kept"]
    assert m["kept"] or m["reason"]
