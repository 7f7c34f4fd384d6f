"""Params shared by the DAGs, with JSON-schema validation for the UI trigger form."""

from __future__ import annotations

from airflow.sdk import Param

from landuse import config


def storage_root() -> Param:
    """Where outputs go: a folder or an ``abfs://container/prefix`` URL."""
    return Param(
        config.storage_root(),
        type="string",
        minLength=1,
        title="Storage root",
        description="Folder or abfs://container/prefix URL for all outputs.",
    )


def registry() -> Param:
    """The county registry (counties.json)."""
    return Param(
        config.registry(),
        type="string",
        minLength=1,
        title="County registry",
        description="counties.json listing each county's bbox, NAIP root and NLCD source.",
    )


def counties() -> Param:
    """County names; empty means every county of the registry."""
    return Param(
        [],
        type="array",
        items={"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
        uniqueItems=True,
        title="Counties",
        description="County names from the registry; leave empty for all of them.",
    )


def years(default: list[int]) -> Param:
    """NAIP years."""
    return Param(
        default,
        type="array",
        items={"type": "integer", "minimum": 2003, "maximum": 2100},
        minItems=1,
        uniqueItems=True,
        title="NAIP years",
        description="NAIP vintages to process, e.g. [2010, 2016].",
    )
