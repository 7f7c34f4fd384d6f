"""Library-test fixtures: the hand-built ONNX bundles of :mod:`onnx_kit`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from onnx_kit import linear_weights, onnx_model, softmax, write_onnx_bundle


@pytest.fixture(scope="session")
def onnx_kit() -> SimpleNamespace:
    """The hand-built ONNX tools: ``bundle`` (:func:`write_onnx_bundle`), ``model``
    (:func:`onnx_model`), ``weights`` (:func:`linear_weights`) and the reference ``softmax``."""
    return SimpleNamespace(
        bundle=write_onnx_bundle, model=onnx_model, weights=linear_weights, softmax=softmax
    )
