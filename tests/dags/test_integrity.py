"""DagBag integrity: every DAG imports cleanly, is tagged, retries, and stays light to parse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAGS = sorted((Path(__file__).resolve().parents[2] / "dags").glob("*.py"))
HEAVY = ("tensorflow", "keras", "pyspark", "rasterio", "onnxruntime", "torch", "landuse")


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAGs found"


def test_every_dag_is_tagged_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


@pytest.mark.parametrize("path", DAGS, ids=[p.name for p in DAGS])
def test_no_heavy_imports_at_module_level(path):
    """The scheduler re-parses DAG files constantly: heavy libraries load inside tasks."""
    tree = ast.parse(path.read_text())
    for node in tree.body:  # module level only; imports inside functions are fine
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in HEAVY, f"{path.name} imports {name} at module level"


def test_dag_ids_match_file_names(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id
