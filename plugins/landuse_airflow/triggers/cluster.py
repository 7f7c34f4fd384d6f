"""Wait for a cluster resize in the triggerer instead of holding a worker slot.

:class:`ClusterSizeTrigger` polls a :mod:`landuse.cluster` scaler (its blocking HTTP calls
run in a thread) until the cluster runs with the target worker count or the deadline
passes, and fires one event: ``ok``, ``timeout`` or ``error``.

Credentials never travel in the trigger's kwargs (they are stored in the metadata DB):
the trigger gets the connection id and reads the connection itself. The same mapping from
a connection to scaler options serves the operator (:func:`build_scaler`):

* ``databricks``: host = workspace URL, password = token (or extra ``token``), extra
  ``cluster_id``;
* ``hdinsight``: extras ``subscription_id``, ``resource_group``, ``cluster_name``,
  optional ``endpoint``; a service principal as login (client id) + password (secret) +
  extra ``tenant_id``, else azure-identity's ``DefaultAzureCredential``;
* ``standalone``: a Spark connection (host ``spark://127.0.0.1``, port 7077) for the
  master URL; extras ``master_web_url``, ``work_dir``, ``spark_home``,
  ``cores_per_worker``, ``memory_per_worker``, ``max_workers``;
* ``none``: no connection.

Where requests go comes from the connection only. Explicit ``scaler_options`` (templated,
so a DAG run's conf can reach them) win over the connection's for settings such as worker
sizes and timeouts, but may carry neither secrets (:data:`SECRET_OPTIONS`) nor places
(:data:`PLACE_OPTIONS`: hosts, endpoints, URLs, cluster and resource ids, and the
standalone backend's folders and Spark installation); otherwise a run could send the
connection's token to any host, or point locally started workers at a foreign master.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from landuse.cluster import ClusterScaler, ClusterStatus

# Options that hold credentials: they must come from a connection, never from DAG code.
SECRET_OPTIONS = frozenset({"token", "client_secret", "password"})
# Options that say where requests go or what runs where: only a connection may set them.
# Databricks: the workspace and the cluster the token acts on. HDInsight: the ARM endpoint
# and the resource path. Standalone: the master the local workers join (it could run any
# code on them), its web UI, the worker listen address, the state folder and spark-class.
PLACE_OPTIONS = frozenset({
    "host", "cluster_id",
    "endpoint", "subscription_id", "resource_group", "cluster_name",
    "master_url", "master_web_url", "work_dir", "spark_home",
})
_STANDALONE_EXTRAS = ("master_web_url", "work_dir", "spark_home", "cores_per_worker",
                      "memory_per_worker", "max_workers")


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy explicit scaler options, refusing credentials and places (a connection's job).

    Raises:
        ValueError: a secret option, or one naming a host, endpoint, URL, cluster or folder,
            was given; the message names it.
    """
    options = dict(options or {})
    secrets = sorted(SECRET_OPTIONS & set(options))
    if secrets:
        raise ValueError(
            f"scaler_options must not hold credentials ({', '.join(secrets)}): they would be "
            "stored with the DAG and the trigger; put them in the Airflow connection"
        )
    places = sorted(PLACE_OPTIONS & set(options))
    if places:
        raise ValueError(
            f"scaler_options must not set {', '.join(places)}: where the cluster is comes "
            "from the Airflow connection only (a templated value could send the "
            "connection's credentials elsewhere); set it on the connection"
        )
    return options


def connection_options(backend: str, conn: Connection | None) -> dict[str, Any]:
    """The scaler options a connection supplies for ``backend`` (see the module docstring)."""
    if conn is None:
        return {}
    extra = conn.extra_dejson
    kind = backend.strip().lower()
    if kind == "databricks":
        options: dict[str, Any] = {"host": conn.host, "token": conn.password or extra.get("token")}
        if extra.get("cluster_id"):
            options["cluster_id"] = extra["cluster_id"]
        return {k: v for k, v in options.items() if v}
    if kind == "hdinsight":
        from landuse.cluster.hdinsight import azure_token_provider

        options = {k: extra[k] for k in ("subscription_id", "resource_group", "cluster_name",
                                          "endpoint") if extra.get(k)}
        options["token"] = azure_token_provider(
            tenant_id=extra.get("tenant_id"), client_id=conn.login, client_secret=conn.password
        )
        return options
    if kind == "standalone":
        options = {k: extra[k] for k in _STANDALONE_EXTRAS if extra.get(k) is not None}
        if conn.host:
            host = conn.host if conn.host.startswith("spark://") else f"spark://{conn.host}"
            options["master_url"] = f"{host}:{conn.port}" if conn.port else host
        return options
    return {}


def build_scaler(
    backend: str, options: Mapping[str, Any] | None = None, conn: Connection | None = None
) -> ClusterScaler:
    """A scaler from the connection's settings overlaid with explicit ``options``.

    Raises:
        ValueError: ``options`` hold a secret or a place (see :func:`check_options`), or
            the backend refuses the settings.
    """
    from landuse.cluster import make_scaler

    return make_scaler(backend, **{**connection_options(backend, conn), **check_options(options)})


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
