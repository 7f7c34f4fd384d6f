"""Grow and shrink the Spark cluster around a scoring run.

One interface (:class:`ClusterScaler`), four backends: a Spark standalone cluster whose
workers run on this machine (:mod:`landuse.cluster.standalone`), Azure HDInsight
(:mod:`landuse.cluster.hdinsight`), Databricks (:mod:`landuse.cluster.databricks`), and
"none" for ``local[N]``, where there is nothing to scale. Pick one with :func:`make_scaler`.
The cloud backends use the maintained SDKs (azure-mgmt-hdinsight, databricks-sdk).
"""

from __future__ import annotations

from typing import Any

from landuse.cluster.base import (
    ClusterError,
    ClusterScaler,
    ClusterStatus,
    ClusterTimeout,
    NoCluster,
    check_target,
)

__all__ = [
    "BACKENDS",
    "ClusterError",
    "ClusterScaler",
    "ClusterStatus",
    "ClusterTimeout",
    "NoCluster",
    "check_target",
    "make_scaler",
]

BACKENDS = ("standalone", "hdinsight", "databricks", "none")


def make_scaler(backend: str, **options: Any) -> ClusterScaler:
    """The scaler for ``backend``, built from its keyword options.

    Args:
        backend: "standalone", "hdinsight", "databricks" or "none" (case-insensitive).
        **options: the backend class's arguments (see :class:`~.standalone.StandaloneCluster`,
            :class:`~.hdinsight.HDInsightCluster`, :class:`~.databricks.DatabricksCluster`);
            "none" takes none.

    Raises:
        ValueError: unknown backend, or options the backend does not take.
    """
    kind = backend.strip().lower()
    if kind == "none":
        if options:
            raise ValueError(f"backend 'none' takes no options, got {sorted(options)}")
        return NoCluster()
    # Backends load on demand: the cloud SDKs stay out of plain imports.
    cls: type[ClusterScaler]
    if kind == "standalone":
        from landuse.cluster.standalone import StandaloneCluster as cls
    elif kind == "hdinsight":
        from landuse.cluster.hdinsight import HDInsightCluster as cls
    elif kind == "databricks":
        from landuse.cluster.databricks import DatabricksCluster as cls
    else:
        raise ValueError(f"unknown cluster backend {backend!r}; use one of {', '.join(BACKENDS)}")
    try:
        return cls(**options)
    except TypeError as err:  # an unknown or missing option: a bad parameter, not a bug
        raise ValueError(f"bad options for the {kind} backend: {err}") from err
