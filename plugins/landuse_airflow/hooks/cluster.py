"""From an Airflow connection to a :mod:`landuse.cluster` scaler, credentials included.

The library never imports Airflow; this hook reads the connection and hands the library what
it needs: a Databricks host and token (or OAuth service principal), or an azure-core
credential for HDInsight. Which connection fields each backend reads:

* ``databricks`` (the Databricks provider's conventions): host = workspace URL; password =
  personal access token (or extra ``token``); or login + password = an OAuth service
  principal's client id and secret with extra ``service_principal_oauth: true``; extra
  ``cluster_id``;
* ``hdinsight`` (the Azure provider's conventions): login + password + extra ``tenantId`` =
  a service principal (azure-identity ``ClientSecretCredential``), else the provider's
  ``DefaultAzureCredential`` (extras ``managed_identity_client_id``,
  ``workload_identity_tenant_id``); extras ``subscriptionId``, ``resource_group``,
  ``cluster_name``, optional ``endpoint`` (Resource Manager URL); ``tenant_id`` and
  ``subscription_id`` are read too;
* ``standalone``: a Spark connection (host ``spark://127.0.0.1``, port 7077) for the
  master URL; extras ``master_web_url``, ``work_dir``, ``spark_home``,
  ``cores_per_worker``, ``memory_per_worker``, ``max_workers``;
* ``none``: no connection.

Where requests go comes from the connection only. Explicit ``options`` (templated in the
operator, so a DAG run's conf can reach them) win over the connection's for settings such as
timeouts and worker sizes, but may carry neither credentials (:data:`SECRET_OPTIONS`) nor
places (:data:`PLACE_OPTIONS`: hosts, endpoints, URLs, cluster and resource ids, and the
standalone backend's folders and Spark installation); otherwise a run could send the
connection's credentials to any host, or point locally started workers at a foreign master.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from airflow.sdk import Connection
    from azure.core.credentials import TokenCredential

    from landuse.cluster import ClusterScaler

# Options that are credentials: they must come from a connection, never from DAG code.
SECRET_OPTIONS = frozenset({"token", "password", "credential", "client_id", "client_secret"})
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


def azure_credential(conn: Connection) -> TokenCredential:
    """The azure-core credential an Azure connection describes.

    A service principal (login = client id, password = secret, extra ``tenantId``) becomes
    azure-identity's ``ClientSecretCredential``; anything else the Azure provider's
    ``DefaultAzureCredential`` (environment, workload identity, managed identity, CLI login).
    """
    extra = conn.extra_dejson
    tenant = extra.get("tenantId") or extra.get("tenant_id")
    if conn.login and conn.password and tenant:
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(tenant_id=tenant, client_id=conn.login,
                                      client_secret=conn.password)
    from airflow.providers.microsoft.azure.utils import get_sync_default_azure_credential

    return get_sync_default_azure_credential(
        managed_identity_client_id=extra.get("managed_identity_client_id"),
        workload_identity_tenant_id=extra.get("workload_identity_tenant_id"),
    )


def connection_options(backend: str, conn: Connection | None) -> dict[str, Any]:
    """The scaler options (credentials included) ``conn`` supplies for ``backend``."""
    if conn is None:
        return {}
    extra = conn.extra_dejson
    kind = backend.strip().lower()
    if kind == "databricks":
        options: dict[str, Any] = {"host": conn.host, "cluster_id": extra.get("cluster_id")}
        if extra.get("service_principal_oauth"):
            options.update(client_id=conn.login, client_secret=conn.password)
        else:
            options["token"] = conn.password or extra.get("token")
        return {k: v for k, v in options.items() if v}
    if kind == "hdinsight":
        options = {
            "subscription_id": extra.get("subscriptionId") or extra.get("subscription_id"),
            "resource_group": extra.get("resource_group"),
            "cluster_name": extra.get("cluster_name"),
            "endpoint": extra.get("endpoint"),
        }
        options = {k: v for k, v in options.items() if v}
        options["credential"] = azure_credential(conn)
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


class ClusterScalerHook(BaseHook):
    """The :mod:`landuse.cluster` scaler of a cluster described by an Airflow connection.

    Args:
        backend: "standalone", "hdinsight", "databricks" or "none".
        conn_id: the connection (see the module docstring for its fields); None for "none".
        options: further scaler settings that are neither credentials nor places.
    """

    hook_name = "Land-use cluster scaler"

    def __init__(self, backend: str, conn_id: str | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.conn_id = conn_id
        self.options = check_options(options)

    def get_conn(self) -> ClusterScaler:
        """A new scaler, its credentials built from the connection."""
        conn = self.get_connection(self.conn_id) if self.conn_id else None
        return build_scaler(self.backend, self.options, conn)
