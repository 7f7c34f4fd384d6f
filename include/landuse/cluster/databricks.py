"""Databricks: resize an all-purpose cluster with the Databricks SDK (``databricks-sdk``).

``WorkspaceClient.clusters.resize(cluster_id, num_workers=N)`` starts the resize;
``clusters.get`` reads it back. In that reading ``num_workers`` is the size the cluster is
heading for (it changes as soon as the resize is accepted), while ``executors`` lists the
worker nodes actually up: the reported worker count. A wait first lets the SDK wait for the
cluster to be RUNNING again (``clusters.wait_get_cluster_running``: it fails at once on
TERMINATED or ERROR), then polls until the executors match the target.

Databricks only resizes a RUNNING (or RESIZING) cluster, so a terminated one is reported,
not started: starting a cluster is a cost decision this code does not make. Resizing an
autoscaling cluster turns it into a fixed-size one (Databricks' behaviour), which is what a
pipeline that sizes its own cluster wants.

Authentication is the SDK's: a personal access token (``token=`` or ``$DATABRICKS_TOKEN``),
an OAuth service principal (``client_id=`` + ``client_secret=``), or whatever else the SDK's
default chain finds (Azure CLI, managed identity, a ``~/.databrickscfg`` profile). The host
comes from ``host=`` or ``$DATABRICKS_HOST`` and must be ``https://`` (plain http only to
loopback, for local fakes): credentials go there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from landuse.cluster.base import (
    ClusterError,
    ClusterScaler,
    ClusterStatus,
    check_target,
    check_token_url,
)

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.compute import ClusterDetails

# States in which Databricks accepts a resize (RESIZING: a new target replaces the old one).
RESIZABLE = ("RUNNING", "RESIZING")
# States from which no size is reached without starting the cluster again.
STOPPED = ("TERMINATING", "TERMINATED", "ERROR")


class DatabricksCluster(ClusterScaler):
    """A Databricks cluster, sized through the SDK's Clusters API.

    Args:
        cluster_id: the cluster's id (``0123-456789-abcdefgh``).
        host: workspace URL; default ``$DATABRICKS_HOST``. ``https://`` is added when missing;
            ``http://`` is refused except to loopback.
        token: personal access token; default the SDK's own lookup (``$DATABRICKS_TOKEN``...).
        client_id: OAuth service principal's client id (with ``client_secret``).
        client_secret: its secret.
        http_timeout_s: timeout of each API call.
        retry_timeout_s: how long the SDK retries a call that failed transiently (429, 503)
            before giving up; a wait keeps polling after that anyway.
    """

    def __init__(
        self,
        cluster_id: str,
        host: str | None = None,
        token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        http_timeout_s: float = 30.0,
        retry_timeout_s: float = 60.0,
    ) -> None:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        host = host or os.environ.get("DATABRICKS_HOST", "")
        if not host:
            raise ValueError("Databricks host missing: pass host= or set DATABRICKS_HOST")
        if not cluster_id:
            raise ValueError("Databricks cluster_id missing")
        if "://" not in host:
            host = f"https://{host}"
        self.host = check_token_url(host, "Databricks host")
        self.cluster_id = cluster_id
        if bool(client_id) != bool(client_secret):
            raise ValueError(f"{self.name}: an OAuth service principal needs both client_id "
                             "and client_secret")
        auth: dict[str, Any] = (
            {"token": token, "auth_type": "pat"} if token
            else {"client_id": client_id, "client_secret": client_secret,
                  "auth_type": "oauth-m2m"} if client_id
            else {}  # the SDK's default chain: environment, CLI logins, config profiles
        )
        try:
            config = Config(host=self.host, http_timeout_seconds=http_timeout_s,
                            retry_timeout_seconds=retry_timeout_s, **auth)
        except ValueError as err:  # the SDK found no usable credentials
            raise ValueError(
                f"no credentials for {self.name}: pass token= (or client_id= and "
                "client_secret=), or set DATABRICKS_TOKEN"
            ) from err
        self._client: WorkspaceClient = WorkspaceClient(config=config)

    @property
    def name(self) -> str:
        return f"Databricks cluster {self.cluster_id} at {self.host}"

    def __repr__(self) -> str:  # the default repr would be harmless; this one is useful
        return f"DatabricksCluster({self.cluster_id!r}, host={self.host!r})"

    def _get(self) -> ClusterDetails:
        from databricks.sdk.errors import DatabricksError

        try:
            return self._client.clusters.get(self.cluster_id)
        except DatabricksError as err:
            raise _cluster_error(self.name, "reading the cluster", err) from err

    @staticmethod
    def _reading(info: ClusterDetails) -> ClusterStatus:
        state = info.state.value if info.state is not None else "UNKNOWN"
        return ClusterStatus(
            state=state,
            running=state == "RUNNING",
            workers=len(info.executors or []),  # absent while no worker is up
            desired=info.num_workers,
        )

    def status(self) -> ClusterStatus:
        """Read ``state``, ``num_workers`` (the target) and ``executors`` (workers up).

        Raises:
            ClusterError: unreadable, or stopped (TERMINATED, ERROR...): no size is reached
                from there without starting the cluster, which this code does not do.
        """
        info = self._get()
        status = self._reading(info)
        if status.state in STOPPED:
            raise ClusterError(f"{self.name} is {status.state}: {info.state_message or ''}"
                               .rstrip(": "))
        return status

    def request(self, target: int) -> None:
        """Start the resize, unless the cluster already has or is heading for ``target``.

        Raises:
            ClusterError: the cluster is not running (terminated clusters are not started
                here), or the API refused the resize.
        """
        from databricks.sdk.errors import DatabricksError

        check_target(target)
        info = self._get()
        state = info.state.value if info.state is not None else "UNKNOWN"
        if state not in RESIZABLE:
            raise ClusterError(
                f"{self.name} is {state}; only a running cluster can be resized (start it "
                "first, or let the job cluster size itself)",
                transient=state in ("PENDING", "RESTARTING"),
            )
        if info.num_workers == target:
            return  # already there or on the way (a retried task must not resize twice)
        try:
            self._client.clusters.resize(self.cluster_id, num_workers=target)
        except DatabricksError as err:
            raise _cluster_error(self.name, "the resize", err) from err

    def wait(
        self,
        target: int,
        timeout_s: float = 900.0,
        poll_s: float = 10.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ClusterStatus:
        """The SDK's wait for RUNNING, then poll until ``target`` executors are up.

        Raises:
            ClusterTimeout: the size was not reached in time.
            ClusterError: the cluster stopped, or a non-transient API error.
        """
        from databricks.sdk.errors import DatabricksError, OperationFailed

        check_target(target)
        if timeout_s < 0 or poll_s <= 0:
            raise ValueError(f"need timeout_s >= 0 and poll_s > 0, got {timeout_s}, {poll_s}")
        deadline = time.monotonic() + timeout_s
        seen: list[ClusterStatus] = []
        try:
            self._client.clusters.wait_get_cluster_running(
                self.cluster_id, timeout=timedelta(seconds=timeout_s),
                callback=lambda info: seen.append(self._reading(info)),
            )
        except TimeoutError:
            raise self.timeout_error(target, timeout_s, seen[-1] if seen else None) from None
        except OperationFailed as err:  # TERMINATED or ERROR while waiting
            reason = str(err).removesuffix(": None")  # the SDK's words; no state message
            raise ClusterError(f"{self.name} stopped while waiting: {reason}") from err
        except DatabricksError as err:
            failure = _cluster_error(self.name, "reading the cluster", err)
            if not failure.transient:
                raise failure from err
        return self.poll_until(target, deadline, timeout_s, poll_s, sleep=sleep)


def _cluster_error(cluster: str, what: str, err: Exception) -> ClusterError:
    """A :class:`ClusterError` for an SDK error: Databricks' error code and message, and
    whether a later try may succeed (429, 5xx, a cluster busy with another operation)."""
    from databricks.sdk.errors import (
        InternalError,
        ResourceConflict,
        TemporarilyUnavailable,
        TooManyRequests,
    )
    from databricks.sdk.errors.base import DatabricksError

    code = err.error_code if isinstance(err, DatabricksError) else None
    transient = isinstance(
        err, TemporarilyUnavailable | TooManyRequests | InternalError | ResourceConflict
    )
    # The SDK appends its configuration (secrets masked) after ". Config:": not needed here.
    text = str(err).strip().split(". Config: ")[0]
    words = text.splitlines()[0][:300] if text else type(err).__name__
    return ClusterError(f"{cluster}: {what} failed: {code + ': ' if code else ''}{words}",
                        transient=transient)
