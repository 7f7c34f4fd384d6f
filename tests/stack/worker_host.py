"""The hostname a test Celery worker records on the task instances it runs.

Workers of a real deployment run on machines (or containers) of their own, so a task
instance's ``hostname`` tells which one ran it. The stack tests start both workers on one
machine; each names itself through ``[core] hostname_callable`` = ``worker_host.name``.
"""

from __future__ import annotations

import os


def name() -> str:
    """The worker's name, from ``LANDUSE_TEST_WORKER_HOST``."""
    return os.environ["LANDUSE_TEST_WORKER_HOST"]
