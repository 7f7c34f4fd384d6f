"""Azure HDInsight: resize the worker role through the Azure Resource Manager REST API.

These are the calls azure-mgmt-hdinsight makes (``clusters.begin_resize`` and
``clusters.get``), sent with ``requests`` so the project needs no extra SDK:

* ``POST {endpoint}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.HDInsight/
  clusters/{name}/roles/workernode/resize?api-version=2021-06-01`` with
  ``{"targetInstanceCount": N}`` starts the resize (a long-running operation: 200 or 202);
* ``GET .../clusters/{name}?api-version=2021-06-01`` reads ``properties.clusterState`` and
  the ``workernode`` role's ``targetInstanceCount`` in ``properties.computeProfile.roles``.

ARM reports no live node count for HDInsight, so the resize is done when the worker role's
``targetInstanceCount`` equals the target, ``clusterState`` is ``Running`` again and
``provisioningState`` (when present) is ``Succeeded``; the reported worker count is that
``targetInstanceCount``. Authentication is an Azure AD bearer token for the management
scope: a callable returning one (see :func:`azure_token_provider`), or a fixed string.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from landuse.cluster.base import (
    ClusterError,
    ClusterScaler,
    ClusterStatus,
    check_target,
    check_token_url,
    http_json,
)

API_VERSION = "2021-06-01"
ENDPOINT = "https://management.azure.com"
SCOPE = "https://management.azure.com/.default"
WORKER_ROLE = "workernode"
# ARM names (a subscription GUID, resource group and cluster names): one path segment each,
# so no value can move a request (and its token) to another resource path.
_ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._()-]*")


def azure_token_provider(
    tenant_id: str | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    scope: str = SCOPE,
) -> Callable[[], str]:
    """A callable returning a management-plane token from azure-identity.

    With all three of tenant, client id and secret: that service principal; otherwise
    ``DefaultAzureCredential`` (environment, managed identity, Azure CLI login, ...).
    azure-identity caches the token and refreshes it before it expires.
    """
    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    if tenant_id and client_id and client_secret:
        credential: Any = ClientSecretCredential(tenant_id, client_id, client_secret)
    else:
        credential = DefaultAzureCredential()

    def token() -> str:
        return str(credential.get_token(scope).token)

    return token


class HDInsightCluster(ClusterScaler):
    """An HDInsight cluster whose worker role is resized through ARM.

    Args:
        subscription_id: Azure subscription id.
        resource_group: the cluster's resource group.
        cluster_name: the cluster's name.
        token: bearer token or a callable returning one; default
            :func:`azure_token_provider` with ``DefaultAzureCredential``.
        endpoint: Resource Manager endpoint (sovereign clouds, or a local fake in tests);
            https, or plain http to loopback only.
        api_version: ``api-version`` of the Microsoft.HDInsight provider.
        http_timeout_s: timeout of each API call.
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        cluster_name: str,
        token: str | Callable[[], str] | None = None,
        endpoint: str = ENDPOINT,
        api_version: str = API_VERSION,
        http_timeout_s: float = 30.0,
    ) -> None:
        import requests

        missing = [k for k, v in (("subscription_id", subscription_id),
                                  ("resource_group", resource_group),
                                  ("cluster_name", cluster_name)) if not v]
        if missing:
            raise ValueError(f"HDInsight cluster needs {', '.join(missing)}")
        bad = [k for k, v in (("subscription_id", subscription_id),
                              ("resource_group", resource_group),
                              ("cluster_name", cluster_name)) if not _ARM_NAME.fullmatch(v)]
        if bad:
            raise ValueError(f"HDInsight {', '.join(bad)} may hold only letters, digits and "
                             "._()- (one URL path segment)")
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.cluster_name = cluster_name
        self.endpoint = check_token_url(endpoint, "Azure Resource Manager endpoint")
        self.api_version = api_version
        self.http_timeout_s = http_timeout_s
        self._token = token if token is not None else azure_token_provider()
        self._session = requests.Session()

    @property
    def name(self) -> str:
        return f"HDInsight cluster {self.resource_group}/{self.cluster_name}"

    def __repr__(self) -> str:
        return f"HDInsightCluster({self.resource_group!r}, {self.cluster_name!r})"

    @property
    def cluster_url(self) -> str:
        """The cluster's ARM resource URL (no query string)."""
        return (
            f"{self.endpoint}/subscriptions/{self.subscription_id}/resourceGroups/"
            f"{self.resource_group}/providers/Microsoft.HDInsight/clusters/{self.cluster_name}"
        )

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        token = self._token() if callable(self._token) else self._token
        return http_json(
            self._session, method, url, cluster=self.name,
            headers={"Authorization": f"Bearer {token}"},
            params={"api-version": self.api_version}, body=body,
            timeout_s=self.http_timeout_s,
        )

    def status(self) -> ClusterStatus:
        """Read ``clusterState``, ``provisioningState`` and the worker role's target count."""
        props = self._call("GET", self.cluster_url).get("properties") or {}
        roles = (props.get("computeProfile") or {}).get("roles") or []
        worker = next((r for r in roles if r.get("name") == WORKER_ROLE), None)
        if worker is None:
            raise ClusterError(f"{self.name} has no {WORKER_ROLE} role in its compute profile")
        state = str(props.get("clusterState", "Unknown"))
        provisioning = props.get("provisioningState")
        return ClusterStatus(
            state=state if provisioning in (None, "Succeeded") else f"{state}/{provisioning}",
            running=state == "Running" and provisioning in (None, "Succeeded"),
            workers=int(worker.get("targetInstanceCount", 0)),
        )

    def request(self, target: int) -> None:
        """Start resizing the worker role, unless it already targets ``target``.

        Raises:
            ClusterError: the API refused (HDInsight needs at least one worker node, for
                instance) or could not be reached.
        """
        check_target(target)
        if self.status().workers == target:
            return  # already there or on the way (a retried task must not resize twice)
        self._call("POST", f"{self.cluster_url}/roles/{WORKER_ROLE}/resize",
                   {"targetInstanceCount": target})
