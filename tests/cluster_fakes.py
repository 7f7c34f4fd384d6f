"""Local fakes of the cluster APIs the scalers call, shared by the library, operator and DAG
tests (importable as ``cluster_fakes``: pytest puts ``tests/`` on the path for its conftest).

:func:`serve` runs one fake (``http.server`` on 127.0.0.1, in a thread). It checks every
request the way the real service would refuse a wrong one, so the tests check what the
SDKs actually send: method, path, query (``api-version``), JSON body and bearer token.
Anything else gets a 4xx and is recorded in ``errors``; tests assert none was.

* ``hdinsight``: Azure Resource Manager as azure-mgmt-hdinsight calls it: ``clusters.get``,
  ``virtual_machines.list_hosts`` (the live hosts: one ``workernode<N>`` per worker up),
  and ``clusters.begin_resize`` as a long-running operation (202 with
  ``Azure-AsyncOperation`` and ``Location`` headers, both of which answer).
* ``databricks``: the Clusters API 2.1 as databricks-sdk calls it (``clusters/get``,
  ``clusters/resize``), and the workspace's ``/.well-known/databricks-config`` the SDK reads
  first (unauthenticated); its workspace id must then come back on every call.
* ``spark-master``: a Spark standalone master's ``/json/`` with no worker registered.

A resize moves the fake cluster to Resizing/RESIZING and back to Running/RUNNING at the
new size after ``polls_to_finish`` reads of the cluster, unless it asks for more than
``capacity`` workers: then it never completes (a cloud out of nodes).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "test-token-not-a-secret"
SUB, RG, NAME = "00000000-0000-0000-0000-000000000001", "rg-landuse", "landuse-hdi"
HDI_PATH = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.HDInsight/"
            f"clusters/{NAME}")
HDI_API_VERSION = "2021-06-01"
CLUSTER_ID = "0123-456789-landuse"
WORKSPACE_ID = "1234567890123456"
_OPERATION = f"{HDI_PATH}/azureasyncoperations/resize-1"
_LOCATION = f"{HDI_PATH}/operationresults/resize-1"


class StaticToken:
    """An azure-core ``TokenCredential`` whose token the fake accepts (or not)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []  # the scopes each call asked for

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class FakeCluster:
    """The fake service's state, and what it saw."""

    kind: str  # "hdinsight", "databricks" or "spark-master"
    workers: int = 2
    target: int = 2
    state: str = ""
    polls_to_finish: int = 2  # reads of the cluster after a resize before it completes
    capacity: int | None = None  # a resize to more workers never completes
    fail_next_gets: int = 0  # answer this many reads of the cluster with 503 first
    operation_fails: bool = False  # HDInsight: the resize operation ends Failed
    cluster_id: str = CLUSTER_ID
    token: str = TOKEN
    pending: int = 0
    seen: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    resizes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)  # the Host header of every request
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.state = self.state or self.running

    @property
    def resizing(self) -> str:
        return "Resizing" if self.kind == "hdinsight" else "RESIZING"

    @property
    def running(self) -> str:
        return "Running" if self.kind == "hdinsight" else "RUNNING"

    @property
    def stuck(self) -> bool:
        return self.capacity is not None and self.target > self.capacity

    def start_resize(self, target: int) -> None:
        self.resizes.append(target)
        self.target, self.state, self.pending = target, self.resizing, self.polls_to_finish

    def read(self) -> None:
        """One read of the cluster: a resize in progress moves one step on."""
        if self.state == self.resizing and not self.stuck:
            self.pending -= 1
            if self.pending <= 0:  # a failed resize brings up no worker
                self.state = self.running
                self.workers = self.workers if self.operation_fails else self.target

    def hdinsight_body(self) -> dict[str, Any]:
        done = self.state == "Running"
        failed = done and self.operation_fails and bool(self.resizes)
        errors = [{"code": "InsufficientCoreQuota",
                   "message": "the subscription has no cores left"}] if failed else []
        return {
            "id": HDI_PATH, "name": NAME, "type": "Microsoft.HDInsight/clusters",
            "properties": {
                "clusterState": self.state,
                "provisioningState": "Failed" if failed else "Succeeded" if done else "InProgress",
                "errors": errors,
                "computeProfile": {"roles": [
                    {"name": "headnode", "targetInstanceCount": 2},
                    # ARM shows the new target as soon as the resize is accepted.
                    {"name": "workernode", "targetInstanceCount": self.target},
                    {"name": "zookeepernode", "targetInstanceCount": 3},
                ]},
            },
        }

    def hdinsight_hosts(self) -> list[dict[str, str]]:
        """The live hosts: head and ZooKeeper nodes, and one entry per worker up."""
        names = ["headnode0", "headnode1", "zookeepernode0", "zookeepernode1",
                 "zookeepernode2"] + [f"workernode{i}" for i in range(self.workers)]
        return [{"name": n, "fqdn": f"{n[:2]}{n[-1]}-{NAME}.internal.cloudapp.net"}
                for n in names]

    def operation_status(self) -> str:
        if self.state == self.resizing:
            return "InProgress"
        return "Failed" if self.operation_fails else "Succeeded"

    def databricks_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"cluster_id": self.cluster_id, "state": self.state,
                                "num_workers": self.target, "spark_version": "16.4.x-scala2.12"}
        if self.workers:  # Databricks leaves the key out when no worker is up
            body["executors"] = [{"node_id": f"n{i}"} for i in range(self.workers)]
        return body


def _handler(fake: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, code: int, body: Any = None, headers: dict[str, str] | None = None
                   ) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, code: int, why: str) -> None:
            fake.errors.append(f"{self.command} {self.path}: {why}")
            if fake.kind == "databricks":
                return self._reply(code, {"error_code": "FAKE_REFUSED", "message": why})
            self._reply(code, {"error": {"code": "FakeRefused", "message": why}})

        def _handle(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            with fake.lock:  # the SDK's poller thread and the scaler's reads interleave
                fake.hosts.append(self.headers.get("Host", ""))
                if fake.kind == "spark-master":
                    if url.path == "/json/":
                        return self._reply(200, {"status": "ALIVE", "workers": []})
                    return self._refuse(404, "no such page")
                body = None
                if raw:
                    if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                        return self._refuse(415, "a body without a JSON content type")
                    body = json.loads(raw)
                if fake.kind == "databricks" and url.path == "/.well-known/databricks-config":
                    oidc = f"http://{self.headers['Host']}/oidc"
                    return self._reply(200, {"oidc_endpoint": oidc, "workspace_id": WORKSPACE_ID})
                fake.seen.append((self.command, url.path, body))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._refuse(401, "bad or missing bearer token")
                if fake.kind == "hdinsight":
                    return self._hdinsight(url.path, query, body)
                return self._databricks(url.path, query, body)

        def _hdinsight(self, path: str, query: dict[str, list[str]], body: Any) -> None:
            if query != {"api-version": [HDI_API_VERSION]}:
                return self._refuse(400, f"query must be api-version={HDI_API_VERSION}, "
                                         f"got {query}")
            if self.command == "GET" and path == HDI_PATH:
                if fake.fail_next_gets:
                    fake.fail_next_gets -= 1
                    return self._reply(503, {"error": {"code": "Busy", "message": "try later"}},
                                       {"Retry-After": "0"})
                fake.read()
                return self._reply(200, fake.hdinsight_body())
            if self.command == "POST" and path == f"{HDI_PATH}/listHosts":
                if body is not None:
                    return self._refuse(400, "listHosts takes no body")
                return self._reply(200, fake.hdinsight_hosts())
            if self.command == "POST" and path == f"{HDI_PATH}/roles/workernode/resize":
                if not isinstance(body, dict) or set(body) != {"targetInstanceCount"} or \
                        not isinstance(body["targetInstanceCount"], int):
                    return self._refuse(400, f"bad resize body {body}")
                fake.start_resize(body["targetInstanceCount"])
                base = f"http://{self.headers['Host']}"
                return self._reply(202, headers={  # ARM: accepted, a long-running operation
                    "Azure-AsyncOperation": f"{base}{_OPERATION}?api-version={HDI_API_VERSION}",
                    "Location": f"{base}{_LOCATION}?api-version={HDI_API_VERSION}",
                })
            if self.command == "GET" and path == _OPERATION and fake.resizes:
                status = fake.operation_status()
                out: dict[str, Any] = {"status": status}
                if status == "Failed":
                    out["error"] = {"code": "InsufficientCoreQuota",
                                    "message": "the subscription has no cores left"}
                return self._reply(200, out)
            if self.command == "GET" and path == _LOCATION and fake.resizes:
                return self._reply(202 if fake.operation_status() == "InProgress" else 200)
            return self._refuse(404, "no such resource")

        def _databricks(self, path: str, query: dict[str, list[str]], body: Any) -> None:
            if self.headers.get("X-Databricks-Workspace-Id") != WORKSPACE_ID:
                return self._refuse(400, "no or wrong X-Databricks-Workspace-Id")
            if self.command == "GET" and path == "/api/2.1/clusters/get":
                if query != {"cluster_id": [fake.cluster_id]}:
                    return self._refuse(400, f"query must be cluster_id={fake.cluster_id}")
                if fake.fail_next_gets:
                    fake.fail_next_gets -= 1
                    return self._reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                             "message": "try later"}, {"Retry-After": "0"})
                fake.read()
                return self._reply(200, fake.databricks_body())
            if self.command == "POST" and path == "/api/2.1/clusters/resize":
                if query:
                    return self._refuse(400, "resize takes no query string")
                if not isinstance(body, dict) or set(body) != {"cluster_id", "num_workers"} \
                        or body["cluster_id"] != fake.cluster_id:
                    return self._refuse(400, f"bad resize body {body}")
                if body["num_workers"] > 100:  # how Databricks answers an impossible size
                    return self._reply(400, {"error_code": "INVALID_PARAMETER_VALUE",
                                             "message": "num_workers exceeds the quota"})
                fake.start_resize(body["num_workers"])
                return self._reply(200, {})
            return self._refuse(404, "no such endpoint")

        do_GET = do_POST = _handle

    return Handler


@dataclass
class FakeApi:
    """A running fake: its state and its base URL."""

    fake: FakeCluster
    url: str

    @property
    def netloc(self) -> str:
        """``host:port``, as a request's Host header names this server."""
        return urlsplit(self.url).netloc


@contextmanager
def serve(fake: FakeCluster) -> Iterator[FakeApi]:
    """Serve ``fake`` on a free loopback port, in a thread, for the ``with`` block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield FakeApi(fake, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
