"""Model bundles: the unit training produces and scoring consumes.

A bundle is a folder::

    bundle.json   schema version, classes, preprocessing, backbone, lineage, metrics, time
    model.onnx    the network in a portable inference format (always)
    model.keras   the trainable form, where there is one
    model.tflite  a TFLite form, where there is one
    model.int8.onnx  an int8 form of model.onnx, checked at training time (see quantize)

Bundles are written to a temporary sibling folder and renamed into place, so a failed
training run leaves no bundle; loading validates everything a runner relies on.

A bundle is published under the storage root (local or ``abfs://``) by
:func:`publish_bundle`, which adds ``contents.json`` (the SHA-256 of every file) and writes
it last: a bundle URL is whole once its ``contents.json`` exists. :func:`load_bundle` takes
such a URL from any process: :func:`fetch_bundle` copies the bundle into a local cache keyed
by its ``contents.json``, so repeated loads of the same bundle download nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from landuse import storage
from landuse.models.preprocessing import PreprocessSpec

SCHEMA_VERSION = 1
MODEL_FILES = {"onnx": "model.onnx", "keras": "model.keras", "tflite": "model.tflite",
               "onnx-int8": "model.int8.onnx"}  # int8: see landuse.models.quantize
CONTENTS = "contents.json"  # written last when a bundle is published: its commit marker


class BundleError(ValueError):
    """A bundle is missing, incomplete or inconsistent; the message names bundle and field."""


class Lineage(BaseModel):
    """What a model learned from."""

    model_config = ConfigDict(extra="forbid")

    dataset_uri: str | None = Field(None, description="the dataset Asset URI or split URL")
    split_sha256: str | None = Field(None, description="SHA-256 of the split Parquet file")
    manifests: dict[str, str] = Field(default_factory=dict, description="manifest -> SHA-256")


class BundleSpec(BaseModel):
    """The contents of ``bundle.json``."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int
    name: str
    classes: tuple[str, ...]
    preprocessing: PreprocessSpec
    backbone: str
    method: str = Field(description="e.g. 'finetune-head', 'logreg', 'random-forest', 'imported'")
    formats: tuple[str, ...] = Field(description="model files present: onnx, keras, tflite")
    onnx_input: str = Field(description="name of the ONNX graph's input")
    onnx_output: str = Field(description="name of the ONNX output holding class probabilities")
    outputs_probabilities: bool = Field(True, description="False: outputs are logits")
    lineage: Lineage = Field(default_factory=Lineage)
    metrics: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"unknown schema_version {version}; this code reads {SCHEMA_VERSION}")
        return version

    @field_validator("classes")
    @classmethod
    def _classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be two or more distinct names, got {classes}")
        return classes

    @field_validator("formats")
    @classmethod
    def _formats(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(formats) - set(MODEL_FILES)
        if unknown or "onnx" not in formats:
            raise ValueError(f"formats must include onnx and only {sorted(MODEL_FILES)}")
        return formats


class Bundle:
    """A loaded, validated bundle folder."""

    def __init__(self, path: Path, spec: BundleSpec) -> None:
        self.path = path
        self.spec = spec
        self._onnx_hash: tuple[tuple[int, int, int], str] | None = None

    @property
    def model_id(self) -> str:
        """Name plus a short content hash of the ONNX model: the id predictions carry."""
        return f"{self.spec.name}@{self.onnx_sha256[:12]}"

    @property
    def onnx_sha256(self) -> str:
        """SHA-256 of model.onnx (bundles are cached by it on scoring workers), hashed once
        per version of the file (inode, size, modification time), not on every call: Spark
        tasks ask for the model id of the same bundle again and again."""
        path = self.file("onnx")
        stat = path.stat()
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._onnx_hash is None or self._onnx_hash[0] != version:
            self._onnx_hash = (version, sha256_file(path))
        return self._onnx_hash[1]

    def file(self, fmt: str) -> Path:
        """Path of one model file.

        Raises:
            BundleError: the bundle lacks that form; for the int8 form, with the reason
                recorded when it was made (``metrics.int8.reason``).
        """
        if fmt not in self.spec.formats:
            why = f"; {self.int8_absence()}" if fmt == "onnx-int8" else ""
            raise BundleError(f"bundle {self.path} has no {fmt} model (it has "
                              f"{self.spec.formats}){why}")
        return self.path / MODEL_FILES[fmt]

    def int8_absence(self) -> str:
        """Why this bundle has no int8 form, as recorded in ``metrics.int8`` (see
        :mod:`landuse.models.quantize`: it is kept only where it wins)."""
        record = self.spec.metrics.get("int8")
        if not isinstance(record, dict):
            return "no int8 form was made for it (bundle.json has no metrics.int8)"
        reason = record.get("reason") or record.get("error") or "no reason recorded"
        return f"its int8 form was not kept when it was built: {reason}"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a bundle folder, or a published bundle's URL (fetched first).

    Checks the schema version, the fields, that every listed model file exists, and that
    the ONNX model's input and output agree with the preprocessing spec and class count.

    Raises:
        BundleError: naming the bundle and the field at fault.
        storage.StorageError: a bundle URL's store cannot be reached.
    """
    path = fetch_bundle(path)
    meta = path / "bundle.json"
    if not meta.is_file():
        raise BundleError(f"bundle {path}: bundle.json is missing")
    try:
        raw = json.loads(meta.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"bundle {path}: bundle.json is not valid JSON ({err})") from err
    try:
        spec = BundleSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "bundle.json"
        raise BundleError(f"bundle {path}: field {field}: {first['msg']}") from err
    for fmt in spec.formats:
        if not (path / MODEL_FILES[fmt]).is_file():
            raise BundleError(
                f"bundle {path}: formats lists {fmt} but {MODEL_FILES[fmt]} is missing"
            )
    _check_onnx(path, spec)
    return Bundle(path, spec)


def _check_onnx(path: Path, spec: BundleSpec) -> None:
    import onnx

    try:
        model = onnx.load(str(path / MODEL_FILES["onnx"]), load_external_data=False)
    except Exception as err:
        raise BundleError(f"bundle {path}: model.onnx cannot be read ({err})") from err
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if spec.onnx_input not in inputs:
        raise BundleError(
            f"bundle {path}: field onnx_input: {spec.onnx_input!r} is not an input "
            f"of model.onnx ({sorted(inputs)})"
        )
    if spec.onnx_output not in outputs:
        raise BundleError(
            f"bundle {path}: field onnx_output: {spec.onnx_output!r} is not an "
            f"output of model.onnx ({sorted(outputs)})"
        )
    elem = inputs[spec.onnx_input].type.tensor_type.elem_type
    want_elem = {"float32": onnx.TensorProto.FLOAT, "uint8": onnx.TensorProto.UINT8}
    if elem != want_elem[spec.preprocessing.dtype]:
        raise BundleError(
            f"bundle {path}: field preprocessing.dtype: {spec.preprocessing.dtype} does not "
            f"match the model input type {onnx.TensorProto.DataType.Name(elem)}"
        )
    dims = [d.dim_value or None for d in inputs[spec.onnx_input].type.tensor_type.shape.dim]
    want = spec.preprocessing.input_shape
    if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], want, strict=True)):
        raise BundleError(
            f"bundle {path}: field preprocessing: model input shape {dims[1:]} does not match "
            f"{spec.preprocessing.layout} {want}"
        )
    out_dims = [d.dim_value or None for d in outputs[spec.onnx_output].type.tensor_type.shape.dim]
    if out_dims and out_dims[-1] not in (None, len(spec.classes)):
        raise BundleError(
            f"bundle {path}: field classes: the model outputs {out_dims[-1]} values but "
            f"{len(spec.classes)} classes are listed"
        )


def write_bundle(
    dest: str | Path, spec: BundleSpec, write_models: Callable[[Path], None]
) -> Bundle:
    """Write a bundle atomically: ``write_models(tmpdir)`` writes the model files, then
    bundle.json is added, the result validated, and the folder renamed into place.

    An existing bundle at ``dest`` is replaced only once the new one is complete and valid.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        write_models(tmp)
        (tmp / "bundle.json").write_text(spec.model_dump_json(indent=2))
        load_bundle(tmp)  # never publish a bundle that would not load
        os.chmod(tmp, 0o755)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except BaseException:
                os.replace(old, dest)  # put the previous bundle back
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_bundle(dest)


def is_remote(url: str | Path) -> bool:
    """Whether ``url`` names a bundle outside the local filesystem (e.g. ``abfs://``)."""
    text = str(url)
    return "://" in text and not text.startswith("file://")


def bundle_cache() -> Path:
    """Local folder of fetched bundles: ``LANDUSE_BUNDLE_CACHE``, else one in the temp dir."""
    configured = os.environ.get("LANDUSE_BUNDLE_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "landuse-bundles"


def publish_bundle(bundle: Bundle, url: str) -> str:
    """Copy a local bundle folder to ``url`` (a folder or ``abfs://``) as one unit.

    ``contents.json`` (SHA-256 of every file) goes last, so a reader that finds it finds a
    whole bundle; a bundle already at ``url`` is replaced. Returns ``url``.
    """
    files = {p.name: p.read_bytes() for p in sorted(bundle.path.iterdir())
             if p.is_file() and p.name != CONTENTS}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    files[CONTENTS] = json.dumps({"files": digests}, indent=2, sort_keys=True).encode()
    storage.write_folder(url, files, commit=CONTENTS)
    return url


def fetch_bundle(url: str | Path, cache: Path | None = None) -> Path:
    """A local folder holding the bundle at ``url``; local paths are returned as they are.

    A remote bundle is downloaded once into ``cache`` (default :func:`bundle_cache`) under a
    name derived from its ``contents.json``; every file is checked against its SHA-256, and
    the folder appears by rename only when complete, so concurrent fetches are safe.

    Raises:
        BundleError: no ``contents.json`` (not a published bundle, or still being written),
            or a file that does not match it.
        storage.StorageError: the store cannot be reached.
    """
    if not is_remote(url):
        return Path(str(url).removeprefix("file://"))
    url = str(url).rstrip("/")
    marker = storage.join(url, CONTENTS)
    if not storage.exists(marker):
        raise BundleError(f"bundle {url}: {CONTENTS} is missing (not a published bundle, or "
                          "still being written)")
    raw = storage.read_bytes(marker)
    try:
        digests: dict[str, str] = json.loads(raw)["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise BundleError(f"bundle {url}: {CONTENTS} is not valid ({err})") from err
    cache = cache or bundle_cache()
    folder = cache / hashlib.sha256(raw).hexdigest()[:32]
    if (folder / CONTENTS).is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=cache))
    try:
        for name, digest in sorted(digests.items()):
            if "/" in name or name.startswith("."):  # one flat folder: nothing may escape it
                raise BundleError(f"bundle {url}: {CONTENTS} names an unsafe file {name!r}")
            data = storage.read_bytes(storage.join(url, name))
            if hashlib.sha256(data).hexdigest() != digest:
                raise BundleError(f"bundle {url}: {name} does not match {CONTENTS} (is the "
                                  "bundle being replaced? try again)")
            (tmp / name).write_bytes(data)
        (tmp / CONTENTS).write_bytes(raw)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process fetched the same bundle first: use its copy
            if not (folder / CONTENTS).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
