"""Databricks: resize an all-purpose cluster through the Clusters REST API (2.1).

``POST {host}/api/2.1/clusters/resize`` with ``{"cluster_id", "num_workers"}`` starts the
resize; ``GET {host}/api/2.1/clusters/get?cluster_id=...`` reads it back. In that reading
``num_workers`` is the size the cluster is heading for (it changes as soon as the resize is
accepted), while ``executors`` lists the worker nodes actually up; the resize is done when
the state is RUNNING and both equal the target. Databricks only resizes a RUNNING (or
RESIZING) cluster, so a terminated one is reported, not started: starting a cluster is a
cost decision this code does not make. Resizing an autoscaling cluster turns it into a
fixed-size one (Databricks' behaviour), which is what a pipeline that sizes its own
cluster wants.

Authentication is a bearer token (a personal access token or an OAuth token), from the
caller or ``$DATABRICKS_TOKEN``; the host likewise from ``$DATABRICKS_HOST``. The token is
only sent over https (plain http only to loopback, for local fakes).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from landuse.cluster.base import (
    ClusterError,
    ClusterScaler,
    ClusterStatus,
    check_target,
    check_token_url,
    http_json,
)

API = "/api/2.1/clusters"
# States in which Databricks accepts a resize (RESIZING: a new target replaces the old one).
RESIZABLE = ("RUNNING", "RESIZING")


class DatabricksCluster(ClusterScaler):
    """A Databricks cluster, sized through the Clusters API.

    Args:
        cluster_id: the cluster's id (``0123-456789-abcdefgh``).
        host: workspace URL; default ``$DATABRICKS_HOST``. ``https://`` is added when missing;
            ``http://`` is refused except to loopback.
        token: bearer token or a callable returning one (for short-lived OAuth tokens);
            default ``$DATABRICKS_TOKEN``.
        http_timeout_s: timeout of each API call.
    """

    def __init__(
        self,
        cluster_id: str,
        host: str | None = None,
        token: str | Callable[[], str] | None = None,
        http_timeout_s: float = 30.0,
    ) -> None:
        import requests

        host = host or os.environ.get("DATABRICKS_HOST", "")
        if not host:
            raise ValueError("Databricks host missing: pass host= or set DATABRICKS_HOST")
        if not cluster_id:
            raise ValueError("Databricks cluster_id missing")
        if "://" not in host:
            host = f"https://{host}"
        self.host = check_token_url(host, "Databricks host")
        self.cluster_id = cluster_id
        token = token or os.environ.get("DATABRICKS_TOKEN")
        if not token:
            raise ValueError(f"no token for {self.name}: pass token= or set DATABRICKS_TOKEN")
        self._token = token
        self.http_timeout_s = http_timeout_s
        self._session = requests.Session()

    @property
    def name(self) -> str:
        return f"Databricks cluster {self.cluster_id} at {self.host}"

    def __repr__(self) -> str:  # the default repr would be harmless; this one is useful
        return f"DatabricksCluster({self.cluster_id!r}, host={self.host!r})"

    def _headers(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}"}

    def _get(self) -> dict[str, object]:
        return http_json(
            self._session, "GET", f"{self.host}{API}/get", cluster=self.name,
            headers=self._headers(), params={"cluster_id": self.cluster_id},
            timeout_s=self.http_timeout_s,
        )

    def status(self) -> ClusterStatus:
        """Read ``state``, ``num_workers`` (the target) and ``executors`` (workers up)."""
        info = self._get()
        state = str(info.get("state", "UNKNOWN"))
        executors = info.get("executors") or []  # absent while no worker is up
        desired = info.get("num_workers")
        return ClusterStatus(
            state=state,
            running=state == "RUNNING",
            workers=len(executors) if isinstance(executors, list) else 0,
            desired=desired if isinstance(desired, int) else None,
        )

    def request(self, target: int) -> None:
        """Start the resize, unless the cluster already has or is heading for ``target``.

        Raises:
            ClusterError: the cluster is not running (terminated clusters are not started
                here), or the API refused the resize.
        """
        check_target(target)
        info = self._get()
        state = str(info.get("state", "UNKNOWN"))
        if state not in RESIZABLE:
            raise ClusterError(
                f"{self.name} is {state}; only a running cluster can be resized (start it "
                "first, or let the job cluster size itself)",
                transient=state in ("PENDING", "RESTARTING"),
            )
        if info.get("num_workers") == target:
            return  # already there or on the way (a retried task must not resize twice)
        http_json(
            self._session, "POST", f"{self.host}{API}/resize", cluster=self.name,
            headers=self._headers(), body={"cluster_id": self.cluster_id, "num_workers": target},
            timeout_s=self.http_timeout_s,
        )
