"""Resize the Spark cluster around a scoring run: a setup task grows it, a teardown shrinks it.

::

    grow = ScaleClusterOperator(task_id="grow_cluster", backend="databricks",
                                conn_id="databricks_scoring", target_workers="{{ params.workers }}")
    shrink = ScaleClusterOperator(task_id="shrink_cluster", backend="databricks",
                                  conn_id="databricks_scoring", target_workers=0)

The operator requests the resize, then waits for the workers to be registered: in the
triggerer (``deferrable=True``, the default; no worker slot is held for minutes of VM
provisioning) or in the task. A timeout fails the task with a message naming the cluster,
the target and the last count seen; a retry re-requests (harmless: the backends skip a
resize the cluster is already doing) and waits again. Bad parameters fail at once, without
retries. Returns (XCom) the worker count reached.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from landuse.cluster import BACKENDS
from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.hooks.cluster import ClusterScalerHook, check_options
from landuse_airflow.triggers.cluster import ClusterSizeTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from landuse.cluster import ClusterScaler


class ScaleClusterOperator(BaseOperator):
    """Resize a Spark cluster to ``target_workers`` and wait until they are registered.

    Args:
        backend: "standalone", "hdinsight", "databricks" or "none" (``local[N]``: no-op).
        target_workers: worker count (templated; a rendered string is read as an integer).
        timeout_s: how long the workers may take to register.
        poll_s: seconds between reads of the cluster's size.
        deferrable: wait in the triggerer (True) or in this task.
        conn_id: Airflow connection with the cluster's endpoint, settings and credentials
            (see :mod:`landuse_airflow.hooks.cluster` for the fields each backend reads).
        scaler_options: further scaler settings (templated), winning over the connection's:
            worker sizes, timeouts. Never credentials, and never where the cluster is (host,
            endpoint, URLs, cluster ids, folders): those come from the connection only, so
            a run's conf cannot send the connection's token elsewhere.
        **kwargs: BaseOperator arguments.
    """

    template_fields: Sequence[str] = ("target_workers", "scaler_options")
    ui_color = "#dae8fc"

    def __init__(
        self,
        *,
        backend: str,
        target_workers: int | str,
        timeout_s: float = 900.0,
        poll_s: float = 15.0,
        deferrable: bool = True,
        conn_id: str | None = None,
        scaler_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Checked when the DAG is parsed: a typo should break the DAG, not a run.
        if backend.strip().lower() not in BACKENDS:
            raise ValueError(f"unknown cluster backend {backend!r}; use one of "
                             f"{', '.join(BACKENDS)}")
        if timeout_s <= 0 or poll_s <= 0:
            raise ValueError(f"timeout_s and poll_s must be > 0, got {timeout_s}, {poll_s}")
        self.backend = backend.strip().lower()
        self.target_workers = target_workers
        self.timeout_s = float(timeout_s)
        self.poll_s = float(poll_s)
        self.deferrable = deferrable
        self.conn_id = conn_id
        self.scaler_options = check_options(scaler_options)

    @cached_property
    def scaler(self) -> ClusterScaler:
        """The cluster's scaler, built on first use (after templates are rendered)."""
        return ClusterScalerHook(self.backend, self.conn_id, self.scaler_options).get_conn()

    def _target(self) -> int:
        value = self.target_workers
        if isinstance(value, str) and value.strip().lstrip("+").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"target_workers must be a non-negative integer, got {value!r}")
        return value

    def execute(self, context: Context) -> int:
        """Request the resize, then wait here or defer to :class:`ClusterSizeTrigger`."""
        from landuse.cluster import ClusterError, ClusterTimeout

        with fail_fast_on_bad_input():  # bad target, options or backend settings: no retry
            target = self._target()
            scaler = self.scaler
            self.log.info("Resizing %s to %d worker(s)", scaler.name, target)
            scaler.request(target)
        try:
            if scaler.is_ready(target):  # nothing to wait for (no-op resize, local[N])
                self.log.info("%s already runs %d worker(s)", scaler.name, target)
                return target
        except ClusterError as err:
            self.log.warning("%s: %s; waiting anyway", scaler.name, err)
        if not self.deferrable:
            try:
                status = scaler.wait(target, self.timeout_s, self.poll_s)
            except ClusterTimeout as err:
                raise AirflowException(str(err)) from err
            self.log.info("%s runs %d worker(s)", scaler.name, status.workers)
            return status.workers
        self.log.info("Deferring: waiting up to %.0f s for %d worker(s)", self.timeout_s, target)
        self.defer(
            trigger=ClusterSizeTrigger(
                backend=self.backend, target_workers=target,
                deadline=time.time() + self.timeout_s, timeout_s=self.timeout_s,
                poll_s=self.poll_s, scaler_options=self.scaler_options, conn_id=self.conn_id,
            ),
            method_name="execute_complete",
            # A backstop only: the trigger fires its own timeout event at the deadline.
            timeout=timedelta(seconds=self.timeout_s + self.poll_s + 60),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> int:
        """Resume after the trigger: return the worker count, or fail with its message.

        Raises:
            AirflowException: the trigger reported a timeout or an error.
        """
        if event.get("status") == "ok":
            self.log.info("%s", event.get("message"))
            return int(event["workers"])
        raise AirflowException(
            event.get("message") or f"cluster resize to {event.get('target')} failed: {event}"
        )

    def on_kill(self) -> None:
        """Log the kill; a standalone scale-up also stops the workers this task started.

        Cloud resizes already requested go on: the cluster API has no cancel, and the next
        run's resize (or the teardown task) sets the size anyway.
        """
        scaler = self.__dict__.get("scaler")  # only if this try built one: no API call here
        if scaler is None:
            self.log.warning("Killed before the cluster was contacted")
            return
        self.log.warning("Killed while resizing %s", scaler.name)
        from landuse.cluster.standalone import StandaloneCluster

        if isinstance(scaler, StandaloneCluster):
            stopped = scaler.stop_started()
            self.log.warning("Stopped %d Spark worker(s) this task had started", stopped)
