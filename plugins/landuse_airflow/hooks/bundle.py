"""A hook around a model bundle: load and validate it once, open each framework's runner once.

Operators never load bundles or build runners themselves; they ask this hook, so a task that
scores many batches pays for ``load_bundle`` (which hashes and checks model.onnx) and for the
runner's session set-up exactly once.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from landuse.models.bundle import Bundle
    from landuse.models.runners import Runner


class ModelBundleHook(BaseHook):
    """A landuse model bundle folder and its inference runners.

    Args:
        bundle_path: the bundle folder (``bundle.json`` plus model files), on local disk.
        threads: inference threads for the ONNX Runtime and TFLite runners. One by default:
            an Airflow worker runs several tasks at once, so a task should not claim every core.
    """

    hook_name = "Land-use model bundle"

    def __init__(self, bundle_path: str | Path, *, threads: int = 1) -> None:
        super().__init__()
        self.bundle_path = str(bundle_path)
        self.threads = threads

    def get_conn(self) -> Bundle:
        """The loaded bundle (hooks conventionally hand out their 'connection' here)."""
        return self.bundle

    @cached_property
    def bundle(self) -> Bundle:
        """The validated bundle; raises BundleError (a ValueError) naming the field at fault."""
        from landuse.models.bundle import load_bundle

        bundle = load_bundle(self.bundle_path)
        self.log.info("loaded bundle %s (%s) from %s", bundle.spec.name, bundle.model_id,
                      self.bundle_path)
        return bundle

    @cached_property
    def onnx_runner(self) -> Runner:
        """ONNX Runtime on the CPU."""
        return self._open("onnx", threads=self.threads)

    @cached_property
    def onnx_int8_runner(self) -> Runner:
        """The bundle's int8 form through ONNX Runtime (its predictions' id ends ``+int8``)."""
        return self._open("onnx-int8", threads=self.threads)

    @cached_property
    def keras_runner(self) -> Runner:
        """The bundle's Keras model (imports TensorFlow: only paid for when asked)."""
        return self._open("keras")

    @cached_property
    def tflite_runner(self) -> Runner:
        """The bundle's TFLite model through TensorFlow's interpreter."""
        return self._open("tflite", threads=self.threads)

    def get_runner(self, framework: str) -> Runner:
        """The cached runner for ``framework`` (onnx, onnx-int8, keras or tflite).

        Raises:
            BundleError: unknown framework, or the bundle has no model in that form.
        """
        from landuse.models.bundle import BundleError
        from landuse.models.runners import FRAMEWORKS

        if framework not in FRAMEWORKS:
            raise BundleError(f"unknown framework {framework!r}; use one of {FRAMEWORKS}")
        runner: Runner = getattr(self, f"{framework.replace('-', '_')}_runner")
        return runner

    def _open(self, framework: str, **options: int) -> Runner:
        from landuse.models.runners import open_runner

        self.log.info("opening the %s runner of %s", framework, self.bundle.model_id)
        return open_runner(self.bundle, framework, **options)
