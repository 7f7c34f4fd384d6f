"""Params shared by the DAGs, with JSON-schema validation for the UI trigger form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


# Params that name a location the run reads or writes, and values that name none.
PLACE_PARAMS = ("storage_root", "registry", "nlcd", "split_url", "image", "model", "output",
                "source")
NOT_A_PLACE = (None, "", "champion")


def check_places(p: Mapping[str, Any]) -> None:
    """Check every location a run's params name against the deployment's allowed roots
    and Spark masters (see :mod:`landuse.places`); call it first thing in a DAG's first
    task, inside :func:`~landuse_airflow.errors.fail_fast_on_bad_input`.

    Raises:
        ValueError: a location outside the allowed roots, or a Spark master not allowed.
    """
    from landuse.places import check_location, check_spark_master

    for key in PLACE_PARAMS:
        if key in p and p[key] not in NOT_A_PLACE:
            check_location(str(p[key]), key)
    if p.get("spark_master") not in (None, "none"):
        check_spark_master(str(p["spark_master"]))


def rendered_number(value: Any, kind: type, name: str) -> Any:
    """A templated operator setting as int or float (Jinja renders strings); ValueError,
    naming the setting, when it is not one (a whole number, for ``int``)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}") from err
    if kind is int and float(value) != number:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return number
