"""Bad input fails a task at once; anything else (a storage hiccup, a lost worker) retries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from landuse.storage import is_transient


@contextmanager
def fail_fast_on_bad_input() -> Iterator[None]:
    """Turn the library's ValueErrors (bad params, corrupt rasters, unknown counties) into
    AirflowFailException, so a run that cannot succeed is not retried.

    Decided by what happened, not by class alone: an error raised because storage was
    unreachable, timed out or throttled (see :func:`landuse.storage.is_transient`) is left
    as it is, so Airflow's retries get their chance.
    """
    try:
        yield
    except ValueError as err:
        if is_transient(err):
            raise
        raise AirflowFailException(str(err)) from err
