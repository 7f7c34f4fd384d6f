"""Bad input fails a task at once; anything else (a storage hiccup, a lost worker) retries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException


@contextmanager
def fail_fast_on_bad_input() -> Iterator[None]:
    """Turn the library's ValueErrors (bad params, corrupt rasters, unknown counties) into
    AirflowFailException, so a run that cannot succeed is not retried."""
    try:
        yield
    except ValueError as err:
        raise AirflowFailException(str(err)) from err
