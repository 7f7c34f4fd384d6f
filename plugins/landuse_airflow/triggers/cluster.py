"""Wait for a cluster resize in the triggerer instead of holding a worker slot.

:class:`ClusterSizeTrigger` polls a :mod:`landuse.cluster` scaler (its blocking SDK calls
run in a thread) until the cluster runs with the target worker count or the deadline
passes, and fires one event: ``ok``, ``timeout`` or ``error``.

Credentials never travel in the trigger's kwargs (they are stored in the metadata DB):
the trigger gets the connection id, reads the connection itself and builds the scaler the
way the operator does (:func:`~landuse_airflow.hooks.cluster.build_scaler`;
:mod:`landuse_airflow.hooks.cluster` documents the connection fields and the options a DAG
may not set).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

# Re-exported: DAG code imports build_scaler from here.
from landuse_airflow.hooks.cluster import (
    PLACE_OPTIONS,
    SECRET_OPTIONS,
    build_scaler,
    check_options,
    connection_options,
)

if TYPE_CHECKING:
    from landuse.cluster import ClusterStatus

__all__ = ["PLACE_OPTIONS", "SECRET_OPTIONS", "ClusterSizeTrigger", "build_scaler",
           "check_options", "connection_options"]


class ClusterSizeTrigger(BaseTrigger):
    """Fire when the cluster runs ``target_workers`` workers, or when ``deadline`` passes.

    Args:
        backend: scaler backend (see :func:`landuse.cluster.make_scaler`).
        target_workers: worker count to wait for.
        deadline: wall-clock time (``time.time()``) to give up at; absolute, so a trigger
            restarted on another triggerer keeps the task's original deadline.
        timeout_s: the wait's length, for the timeout message.
        poll_s: seconds between reads.
        scaler_options: scaler settings that are neither secrets nor places (see
            :func:`check_options`).
        conn_id: Airflow connection with the cluster's endpoint, settings and credentials;
            the triggerer reads it, so no credential is stored with the trigger.
    """

    def __init__(
        self,
        *,
        backend: str,
        target_workers: int,
        deadline: float,
        timeout_s: float,
        poll_s: float,
        scaler_options: dict[str, Any] | None = None,
        conn_id: str | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.target_workers = target_workers
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.scaler_options = check_options(scaler_options)
        self.conn_id = conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs to rebuild this trigger in the triggerer (no secrets)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "backend": self.backend,
                "target_workers": self.target_workers,
                "deadline": self.deadline,
                "timeout_s": self.timeout_s,
                "poll_s": self.poll_s,
                "scaler_options": self.scaler_options,
                "conn_id": self.conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until ready or past the deadline; yields exactly one event."""
        from landuse.cluster import ClusterError

        target = self.target_workers
        try:
            conn = await BaseHook.aget_connection(self.conn_id) if self.conn_id else None
            scaler = await asyncio.to_thread(build_scaler, self.backend, self.scaler_options, conn)
        except Exception as err:  # a missing connection or bad options: report, do not hang
            yield TriggerEvent({"status": "error", "target": target, "workers": None,
                                "message": f"cannot set up the {self.backend} scaler: {err}"})
            return
        last: ClusterStatus | None = None
        last_error: str | None = None
        while True:  # bounded by the deadline: each pass returns or sleeps toward it
            try:
                status = await asyncio.to_thread(scaler.status)
            except ClusterError as err:
                if not err.transient:
                    yield TriggerEvent({"status": "error", "target": target,
                                        "workers": last.workers if last else None,
                                        "message": str(err)})
                    return
                last_error = str(err)
                self.log.warning("%s: %s (will retry)", scaler.name, err)
            else:
                last = status
                if scaler.satisfies(status, target):
                    yield TriggerEvent({
                        "status": "ok", "target": target, "workers": status.workers,
                        "message": f"{scaler.name} runs {status.workers} worker(s), "
                                   f"state {status.state}",
                    })
                    return
                self.log.info("%s: %d of %d worker(s), state %s", scaler.name, status.workers,
                              target, status.state)
            remaining = self.deadline - time.time()
            if remaining <= 0:
                error = scaler.timeout_error(target, self.timeout_s, last, last_error)
                yield TriggerEvent({"status": "timeout", "target": target,
                                    "workers": error.last_seen, "message": str(error)})
                return
            await asyncio.sleep(min(self.poll_s, remaining))
