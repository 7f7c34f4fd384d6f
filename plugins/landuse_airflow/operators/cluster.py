"""Resize the Spark cluster around a scoring run: a setup task grows it, a teardown shrinks it.

::

    grow = ScaleClusterOperator(task_id="grow_cluster", backend="databricks",
                                conn_id="databricks_scoring", target_workers="{{ params.workers }}")
    shrink = ScaleClusterOperator(task_id="shrink_cluster", backend="databricks",
                                  conn_id="databricks_scoring", target_workers=0)

The operator requests the resize, then waits for the workers to be registered: in the
triggerer (``deferrable=True``, the default; no worker slot is held for minutes of VM
provisioning) or in the task; ``wait=False`` only requests (a setup task whose waiting is a
later task, so that a cluster that never grows fails the run *after* the setup succeeded and
its teardown still shrinks it). Backend, connection, target and timeout are templated, so a
DAG can take them from its params. A timeout fails the task without retries (the wait has
spent its patience), with a message naming the cluster, the target and the last count seen;
other failures retry (harmless: the backends skip a resize the cluster is already doing).
Bad parameters fail at once, without retries. Returns (XCom) the worker count reached (the
target when not waiting).

``local_master=True`` makes a standalone cluster whose master is on this machine
(``spark://127.0.0.1:...``, a development cluster) self-contained: the master is started
before workers are asked for (reused when running), and stopped once the cluster has shrunk
to zero workers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from landuse.cluster import BACKENDS
from landuse_airflow.errors import fail_fast_on_bad_input
from landuse_airflow.hooks.cluster import ClusterScalerHook, check_options
from landuse_airflow.triggers.cluster import ClusterSizeTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from landuse.cluster import ClusterScaler
    from landuse.cluster.standalone import StandaloneCluster


class ScaleClusterOperator(BaseOperator):
    """Resize a Spark cluster to ``target_workers`` and wait until they are registered.

    Args:
        backend: "standalone", "hdinsight", "databricks" or "none" (``local[N]``: no-op)
            (templated; checked when the DAG is parsed unless it is a template).
        target_workers: worker count (templated; a rendered string is read as an integer).
        timeout_s: how long the workers may take to register (templated).
        poll_s: seconds between reads of the cluster's size.
        deferrable: wait in the triggerer (True) or in this task.
        wait: wait for the workers (True), or only request the resize.
        conn_id: Airflow connection with the cluster's endpoint, settings and credentials
            (see :mod:`landuse_airflow.hooks.cluster` for the fields each backend reads);
            templated, an empty rendering meaning none. The standalone backend needs one:
            where the master is comes from a connection only.
        scaler_options: further scaler settings (templated), winning over the connection's:
            worker sizes, timeouts. Never credentials, and never where the cluster is (host,
            endpoint, URLs, cluster ids, folders): those come from the connection only, so
            a run's conf cannot send the connection's token elsewhere.
        local_master: for a standalone cluster whose master is on this machine, start the
            master before growing and stop it once shrunk to zero workers.
        **kwargs: BaseOperator arguments.
    """

    template_fields: Sequence[str] = ("backend", "conn_id", "target_workers", "timeout_s",
                                      "scaler_options")
    ui_color = "#dae8fc"

    def __init__(
        self,
        *,
        backend: str,
        target_workers: int | str,
        timeout_s: float | str = 900.0,
        poll_s: float = 15.0,
        deferrable: bool = True,
        wait: bool = True,
        conn_id: str | None = None,
        scaler_options: dict[str, Any] | None = None,
        local_master: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Checked when the DAG is parsed: a typo should break the DAG, not a run.
        if "{{" not in backend:
            backend = _backend(backend)
        if not isinstance(timeout_s, str):
            _positive(timeout_s, "timeout_s")
        _positive(poll_s, "poll_s")
        self.backend = backend
        self.target_workers = target_workers
        self.timeout_s = timeout_s
        self.poll_s = float(poll_s)
        self.deferrable = deferrable
        self.wait = wait
        self.conn_id = conn_id
        self.scaler_options = check_options(scaler_options)
        self.local_master = local_master

    @cached_property
    def scaler(self) -> ClusterScaler:
        """The cluster's scaler, built on first use (after templates are rendered)."""
        backend, conn_id = _backend(self.backend), self.conn_id or None
        if backend == "standalone" and conn_id is None:
            raise ValueError("the standalone backend needs conn_id: a Spark connection whose "
                             "host and port are the master (spark://127.0.0.1, 7077) and "
                             "whose extra master_web_url is its web UI")
        return ClusterScalerHook(backend, conn_id, self.scaler_options).get_conn()

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
            timeout_s = _positive(self.timeout_s, "timeout_s")
            scaler = self.scaler
        local = self._local_master(scaler)
        if local is not None and target > 0:
            self._start_master(local)
        self.log.info("Resizing %s to %d worker(s)", scaler.name, target)
        with fail_fast_on_bad_input():
            scaler.request(target)
        if not self.wait:
            return target
        try:
            if scaler.is_ready(target):  # nothing to wait for (no-op resize, local[N])
                self.log.info("%s already runs %d worker(s)", scaler.name, target)
                return self._reached(target, target)
        except ClusterError as err:
            self.log.warning("%s: %s; waiting anyway", scaler.name, err)
        if not self.deferrable:
            try:
                status = scaler.wait(target, timeout_s, self.poll_s)
            except ClusterTimeout as err:  # the wait spent its patience: do not retry
                raise AirflowFailException(str(err)) from err
            self.log.info("%s runs %d worker(s)", scaler.name, status.workers)
            return self._reached(target, status.workers)
        self.log.info("Deferring: waiting up to %.0f s for %d worker(s)", timeout_s, target)
        self.defer(
            trigger=ClusterSizeTrigger(
                backend=_backend(self.backend), target_workers=target,
                deadline=time.time() + timeout_s, timeout_s=timeout_s,
                poll_s=self.poll_s, scaler_options=self.scaler_options,
                conn_id=self.conn_id or None,
            ),
            method_name="execute_complete",
            # A backstop only: the trigger fires its own timeout event at the deadline.
            timeout=timedelta(seconds=timeout_s + self.poll_s + 60),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> int:
        """Resume after the trigger: return the worker count, or fail with its message.

        Raises:
            AirflowFailException: the trigger reported a timeout (not retried).
            AirflowException: the trigger reported an error.
        """
        if event.get("status") == "ok":
            self.log.info("%s", event.get("message"))
            return self._reached(int(event["target"]), int(event["workers"]))
        message = (event.get("message")
                   or f"cluster resize to {event.get('target')} failed: {event}")
        if event.get("status") == "timeout":
            raise AirflowFailException(message)
        raise AirflowException(message)

    def _reached(self, target: int, workers: int) -> int:
        """The cluster is at ``target``: a local master of an empty cluster is stopped."""
        if target == 0 and self.local_master:
            local = self._local_master(self.scaler)
            if local is not None:
                from landuse.cluster.standalone import stop_master

                stopped = stop_master(local.work_dir)
                self.log.info("Stopped the local Spark master: %s", stopped)
        return workers

    def _local_master(self, scaler: ClusterScaler) -> StandaloneCluster | None:
        """The scaler, when ``local_master`` is set and it is a standalone cluster whose
        master runs on this machine."""
        from landuse.cluster.standalone import StandaloneCluster

        if self.local_master and isinstance(scaler, StandaloneCluster) and (
                scaler.master_url.startswith("spark://127.0.0.1:")):
            return scaler
        return None

    def _start_master(self, local: StandaloneCluster) -> None:
        from urllib.parse import urlparse

        from landuse.cluster.standalone import start_master

        start_master(local.work_dir, spark_home=local.spark_home,
                     port=urlparse(local.master_url).port or 7077,
                     webui_port=urlparse(local.master_web_url).port or 8081)
        self.log.info("Local Spark master %s is up", local.master_url)

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


def _backend(value: str) -> str:
    """A backend name, normalised; ValueError naming the choices if unknown."""
    backend = str(value).strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown cluster backend {value!r}; use one of {', '.join(BACKENDS)}")
    return backend


def _positive(value: Any, name: str) -> float:
    """A positive number of seconds (templated values arrive as strings)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from err
    if isinstance(value, bool) or not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number
