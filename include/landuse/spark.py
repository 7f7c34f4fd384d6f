"""A Spark session configured for this project's machines: loopback when local, Arrow on.

Training (featurize and classify) and scoring share it, so both run their Python workers
the same way: the project's interpreter, one math-library thread per worker (Spark already
runs one worker per core; more threads would only oversubscribe the cores).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def local_spark(
    app_name: str = "landuse",
    master: str = "local[2]",
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """A SparkSession for this machine (or the running one, if a session exists already).

    Args:
        app_name: Spark application name.
        master: Spark master URL; ``local[N]`` runs N tasks at once in this process's JVM.
        conf: extra Spark settings, applied last (they win over the defaults here).

    Returns:
        The session. A running session on another master is stopped first; static settings
        (driver memory, host) only take effect when this call starts the JVM.
    """
    from pyspark.sql import SparkSession

    # PySpark starts its Python workers with $PYSPARK_PYTHON (default: whatever python3 is on
    # PATH); without it, use this interpreter so workers see the same packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings: dict[str, str] = {}
    if master.startswith("local") or master.startswith("spark://127.0.0.1:"):
        # Loopback only: nothing should listen outside this machine. A remote cluster's
        # executors must reach the driver, so there Spark picks the address.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        settings.update({"spark.driver.host": "127.0.0.1",
                         "spark.driver.bindAddress": "127.0.0.1"})
    settings.update({
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        # Small data per job here: a few partitions, not the default 200.
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "4",
        # Workers are reused so per-worker caches (ONNX sessions) survive between tasks.
        "spark.python.worker.reuse": "true",
        "spark.executorEnv.OMP_NUM_THREADS": "1",
        "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
        "spark.driver.memory": "4g",
    })
    settings.update(conf or {})
    active = SparkSession.getActiveSession()
    if active is not None and active.sparkContext.master != master:
        active.stop()  # getOrCreate would silently keep the other master
    builder = SparkSession.builder.appName(app_name).master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
