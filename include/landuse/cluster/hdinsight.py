"""Azure HDInsight: resize the worker role with azure-mgmt-hdinsight.

* ``clusters.begin_resize(rg, name, "workernode", ClusterResizeParameters(n))`` starts the
  resize, a long-running operation; its poller follows the operation (``Azure-AsyncOperation``
  or ``Location`` header) in a background thread and reports how it ended;
* ``clusters.get`` reads ``clusterState``, ``provisioningState`` and the worker role's
  ``targetInstanceCount`` (the size ARM is heading for, changed as soon as a resize is
  accepted);
* ``virtual_machines.list_hosts`` lists the cluster's live hosts; the worker nodes among
  them (``workernode<N>`` or ``wn<N>-...``) are the reported worker count.

The resize is done when the cluster is ``Running``, provisioning ``Succeeded``, the role
targets the size, that many worker hosts are live and, when this object started the resize,
its operation has succeeded (a failed operation fails the wait with Azure's error).

Credentials: any azure-core ``TokenCredential`` (azure-identity's ``ClientSecretCredential``,
a managed identity, or what an Airflow hook built from a connection); by default
``DefaultAzureCredential``. Tokens go to ``https://`` endpoints only (plain ``http`` to
loopback, for local fakes).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from landuse.cluster.base import (
    ClusterError,
    ClusterScaler,
    ClusterStatus,
    check_target,
    check_token_url,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.polling import LROPoller
    from azure.mgmt.hdinsight import HDInsightManagementClient

ENDPOINT = "https://management.azure.com"
WORKER_ROLE = "workernode"
# ARM names (a subscription GUID, resource group and cluster names): one path segment each,
# so no value can move a request (and its token) to another resource path.
_ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._()-]*")
# Worker hosts in list_hosts: "workernode0" (the API's VM names) or "wn0-<cluster>" (host names).
_WORKER_HOST = re.compile(r"(workernode|wn)\d+(-|$)", re.IGNORECASE)


class HDInsightCluster(ClusterScaler):
    """An HDInsight cluster whose worker role is resized through Azure Resource Manager.

    Args:
        subscription_id: Azure subscription id.
        resource_group: the cluster's resource group.
        cluster_name: the cluster's name.
        credential: an azure-core ``TokenCredential``; default azure-identity's
            ``DefaultAzureCredential`` (environment, managed identity, Azure CLI login...).
        endpoint: Resource Manager URL (sovereign clouds, or a local fake in tests); https,
            or plain http to loopback only. Tokens are asked for ``{endpoint}/.default``.
        http_timeout_s: connect and read timeout of each API call.
        retries: retries of a call the SDK deems transient (429, 5xx, connection errors);
            a wait keeps polling through errors beyond that anyway.
        polling_interval_s: seconds between the resize operation's status reads when
            Azure names none (``Retry-After``).
    """

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        cluster_name: str,
        credential: TokenCredential | None = None,
        endpoint: str = ENDPOINT,
        http_timeout_s: float = 30.0,
        retries: int = 3,
        polling_interval_s: float = 30.0,
    ) -> None:
        from azure.mgmt.hdinsight import HDInsightManagementClient

        names = (("subscription_id", subscription_id), ("resource_group", resource_group),
                 ("cluster_name", cluster_name))
        missing = [k for k, v in names if not v]
        if missing:
            raise ValueError(f"HDInsight cluster needs {', '.join(missing)}")
        bad = [k for k, v in names if not _ARM_NAME.fullmatch(v)]
        if bad:
            raise ValueError(f"HDInsight {', '.join(bad)} may hold only letters, digits and "
                             "._()- (one URL path segment)")
        if retries < 0 or http_timeout_s <= 0 or polling_interval_s <= 0:
            raise ValueError("HDInsight needs retries >= 0, http_timeout_s > 0 and "
                             f"polling_interval_s > 0, got {retries}, {http_timeout_s}, "
                             f"{polling_interval_s}")
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.cluster_name = cluster_name
        self.endpoint = check_token_url(endpoint, "Azure Resource Manager endpoint")
        self.http_timeout_s = http_timeout_s
        self.polling_interval_s = polling_interval_s
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._client: HDInsightManagementClient = HDInsightManagementClient(
            credential, subscription_id, base_url=self.endpoint,
            credential_scopes=[f"{self.endpoint}/.default"],
            polling_interval=polling_interval_s, retry_total=retries,
            connection_timeout=http_timeout_s, read_timeout=http_timeout_s,
        )
        # azure-core refuses bearer tokens over plain http; check_token_url allowed it only
        # for loopback (a local fake), so lift the refusal there and nowhere else.
        self._call_options: dict[str, Any] = (
            {} if self.endpoint.startswith("https://") else {"enforce_https": False}
        )
        self._resize: LROPoller[None] | None = None  # the resize this object started

    @property
    def name(self) -> str:
        return f"HDInsight cluster {self.resource_group}/{self.cluster_name}"

    def __repr__(self) -> str:
        return f"HDInsightCluster({self.resource_group!r}, {self.cluster_name!r})"

    def _api(self, what: str, call: Any, *args: Any) -> Any:
        """Run one SDK call, its failures turned into :class:`ClusterError`."""
        from azure.core.exceptions import AzureError

        try:
            return call(self.resource_group, self.cluster_name, *args, **self._call_options)
        except AzureError as err:
            raise _cluster_error(self.name, what, err) from err

    def _role_target(self) -> tuple[str, str | None, int]:
        """``clusterState``, ``provisioningState`` and the worker role's target count.

        Raises:
            ClusterError: the cluster is in ``Error`` or its provisioning ``Failed`` (after a
                failed resize, say): no wait could end well, so it ends now with the
                cluster's own errors. This is what a wait sees without the resize's poller
                (a deferred wait, in the triggerer).
        """
        cluster = self._api("reading the cluster", self._client.clusters.get)
        props = cluster.properties
        roles = (props.compute_profile.roles or []) if props and props.compute_profile else []
        worker = next((r for r in roles if r.name == WORKER_ROLE), None)
        if worker is None or props is None:
            raise ClusterError(f"{self.name} has no {WORKER_ROLE} role in its compute profile")
        state = str(props.cluster_state or "Unknown")
        if state == "Error" or props.provisioning_state == "Failed":
            errors = "; ".join(f"{e.code}: {e.message}" for e in props.errors or [])
            raise ClusterError(f"{self.name} is {state}, provisioning "
                               f"{props.provisioning_state}: {errors or 'no errors listed'}"[:500])
        return state, props.provisioning_state, int(worker.target_instance_count or 0)

    def live_workers(self) -> int:
        """Worker hosts the cluster lists now (``virtual_machines.list_hosts``)."""
        hosts = self._api("listing the hosts", self._client.virtual_machines.list_hosts)
        return sum(
            1 for host in hosts
            if _WORKER_HOST.match(host.name or "")
            or _WORKER_HOST.match((host.fqdn or "").split(".")[0])
        )

    def status(self) -> ClusterStatus:
        """The cluster's state, live worker hosts and the worker role's target.

        While a resize this object started is still running, the state says so and the
        cluster does not count as running.

        Raises:
            ClusterError: the cluster cannot be read, is in error, or the resize operation
                failed.
        """
        if self._resize is not None and self._resize.done():
            self._raise_if_resize_failed()  # the operation's own words first
        state, provisioning, desired = self._role_target()
        settled = provisioning in (None, "Succeeded")
        shown = state if settled else f"{state}/{provisioning}"
        running = state == "Running" and settled
        if self._resize is not None and not self._resize.done():
            shown, running = f"{shown} (resize operation {self._resize.status()})", False
        return ClusterStatus(state=shown, running=running, workers=self.live_workers(),
                             desired=desired)

    def _raise_if_resize_failed(self) -> None:
        """Raise the finished resize operation's error, if it ended in one."""
        from azure.core.exceptions import AzureError

        assert self._resize is not None
        try:
            self._resize.result(timeout=0)
        except AzureError as err:
            raise _cluster_error(self.name, "the resize operation", err) from err

    def request(self, target: int) -> None:
        """Start resizing the worker role, unless it already targets ``target``.

        Returns once Azure accepted the resize; the operation's poller follows it in the
        background (see :meth:`status`).

        Raises:
            ClusterError: the API refused (HDInsight needs at least one worker node, for
                instance) or could not be reached.
        """
        from azure.mgmt.hdinsight.models import ClusterResizeParameters

        check_target(target)
        if self._role_target()[2] == target:
            return  # already there or on the way (a retried task must not resize twice)
        self._resize = self._api(
            "starting the resize", self._client.clusters.begin_resize, WORKER_ROLE,
            ClusterResizeParameters(target_instance_count=target),
        )


def _cluster_error(cluster: str, what: str, err: Exception) -> ClusterError:
    """A :class:`ClusterError` for an azure-core error: Azure's own words, and whether a
    later try may succeed (no response, 409 another operation running, 429, 5xx)."""
    from azure.core.exceptions import HttpResponseError

    if not isinstance(err, HttpResponseError) or err.status_code is None:
        return ClusterError(f"{cluster}: {what} failed: {_first_line(err)}", transient=True)
    code = err.status_code
    detail = err.error.code if err.error is not None and err.error.code else err.reason
    words = err.error.message if err.error is not None and err.error.message else _first_line(err)
    if code < 400:  # a long-running operation that ended Failed (its status read was 200)
        return ClusterError(f"{cluster}: {what} failed: {detail}: {words}"[:500])
    return ClusterError(
        f"{cluster}: {what} returned HTTP {code}: {detail}: {words}"[:500],
        transient=code in (409, 429) or code >= 500,
    )


def _first_line(err: Exception) -> str:
    """The first line of an SDK error (the rest repeats the response)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
