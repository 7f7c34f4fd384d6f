"""HDInsight and Databricks backends against a local fake of each REST API.

The fake (an ``http.server`` on 127.0.0.1, in a thread) checks every request the way the
real service would refuse a wrong one: method, path, ``api-version``, JSON body and bearer
token; anything else gets a 4xx and is recorded, and each test asserts none was. A resize
moves the fake cluster to Resizing/RESIZING and back to Running/RUNNING at the new size
after a set number of reads, or never (``stuck``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from landuse.cluster import ClusterError, ClusterTimeout, make_scaler
from landuse.cluster.databricks import DatabricksCluster
from landuse.cluster.hdinsight import HDInsightCluster

TOKEN = "test-token-not-a-secret"
SUB, RG, NAME = "00000000-0000-0000-0000-000000000001", "rg-landuse", "landuse-hdi"
HDI_PATH = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.HDInsight/"
            f"clusters/{NAME}")
CLUSTER_ID = "0123-456789-landuse"
POLL_S = 0.02


@dataclass
class FakeCluster:
    """The fake service's state, and what it saw."""

    kind: str  # "hdinsight" or "databricks"
    workers: int = 2
    target: int = 2
    state: str = ""
    polls_to_finish: int = 2  # reads after a resize before it completes
    stuck: bool = False  # a resize that never completes
    fail_next_gets: int = 0  # answer this many reads with 503 first
    pending: int = 0
    seen: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)  # the Host headers requests arrived with

    def __post_init__(self) -> None:
        self.state = self.state or ("Running" if self.kind == "hdinsight" else "RUNNING")

    @property
    def resizing(self) -> str:
        return "Resizing" if self.kind == "hdinsight" else "RESIZING"

    @property
    def running(self) -> str:
        return "Running" if self.kind == "hdinsight" else "RUNNING"

    def start_resize(self, target: int) -> None:
        self.target, self.state, self.pending = target, self.resizing, self.polls_to_finish

    def read(self) -> None:
        """One GET: a resize in progress moves one step on."""
        if self.state == self.resizing and not self.stuck:
            self.pending -= 1
            if self.pending <= 0:
                self.state, self.workers = self.running, self.target

    def hdinsight_body(self) -> dict[str, Any]:
        done = self.state == "Running"
        return {
            "id": HDI_PATH, "name": NAME, "type": "Microsoft.HDInsight/clusters",
            "properties": {
                "clusterState": self.state,
                "provisioningState": "Succeeded" if done else "InProgress",
                "computeProfile": {"roles": [
                    {"name": "headnode", "targetInstanceCount": 2},
                    # ARM shows the new target as soon as the resize is accepted.
                    {"name": "workernode", "targetInstanceCount": self.target},
                    {"name": "zookeepernode", "targetInstanceCount": 3},
                ]},
            },
        }

    def databricks_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"cluster_id": CLUSTER_ID, "state": self.state,
                                "num_workers": self.target, "spark_version": "16.4.x-scala2.12"}
        if self.workers:  # Databricks leaves the key out when no worker is up
            body["executors"] = [{"node_id": f"n{i}"} for i in range(self.workers)]
        return body


def _handler(fake: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, code: int, body: dict[str, Any] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, code: int, why: str) -> None:
            fake.errors.append(f"{self.command} {self.path}: {why}")
            self._reply(code, {"error": {"code": "FakeRefused", "message": why}})

        def _handle(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            body = None
            if self.command == "POST":
                if self.headers.get("Content-Type") != "application/json":
                    return self._refuse(415, "POST without a JSON content type")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.seen.append((self.command, url.path, body))
            fake.hosts.add(self.headers.get("Host", ""))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._refuse(401, "bad or missing bearer token")
            if fake.kind == "hdinsight":
                return self._hdinsight(url.path, query, body)
            return self._databricks(url.path, query, body)

        def _hdinsight(self, path: str, query: dict[str, list[str]], body: Any) -> None:
            if query != {"api-version": ["2021-06-01"]}:
                return self._refuse(400, f"query must be api-version=2021-06-01, got {query}")
            if self.command == "GET" and path == HDI_PATH:
                if fake.fail_next_gets:
                    fake.fail_next_gets -= 1
                    return self._reply(503, {"error": {"code": "Busy", "message": "try later"}})
                fake.read()
                return self._reply(200, fake.hdinsight_body())
            if self.command == "POST" and path == f"{HDI_PATH}/roles/workernode/resize":
                if set(body) != {"targetInstanceCount"} or not isinstance(
                    body["targetInstanceCount"], int
                ):
                    return self._refuse(400, f"bad resize body {body}")
                fake.start_resize(body["targetInstanceCount"])
                return self._reply(202)  # ARM: accepted, a long-running operation
            return self._refuse(404, "no such resource")

        def _databricks(self, path: str, query: dict[str, list[str]], body: Any) -> None:
            if self.command == "GET" and path == "/api/2.1/clusters/get":
                if query != {"cluster_id": [CLUSTER_ID]}:
                    return self._refuse(400, f"query must be cluster_id={CLUSTER_ID}")
                if fake.fail_next_gets:
                    fake.fail_next_gets -= 1
                    return self._reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                             "message": "try later"})
                fake.read()
                return self._reply(200, fake.databricks_body())
            if self.command == "POST" and path == "/api/2.1/clusters/resize":
                if query:
                    return self._refuse(400, "resize takes no query string")
                if set(body) != {"cluster_id", "num_workers"} or body["cluster_id"] != CLUSTER_ID:
                    return self._refuse(400, f"bad resize body {body}")
                if body["num_workers"] > 100:  # how Databricks answers an impossible size
                    return self._reply(400, {"error_code": "INVALID_PARAMETER_VALUE",
                                             "message": "num_workers exceeds the quota"})
                fake.start_resize(body["num_workers"])
                return self._reply(200, {})
            return self._refuse(404, "no such endpoint")

        do_GET = do_POST = _handle

    return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start fakes on free loopback ports; yields ``serve(fake) -> base URL``."""
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeCluster) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def hdinsight(endpoint: str, **options: Any) -> HDInsightCluster:
    scaler = make_scaler("hdinsight", subscription_id=SUB, resource_group=RG, cluster_name=NAME,
                         token=TOKEN, endpoint=endpoint, **options)
    assert isinstance(scaler, HDInsightCluster)
    return scaler


def databricks(host: str, **options: Any) -> DatabricksCluster:
    scaler = make_scaler("databricks", host=host, cluster_id=CLUSTER_ID, token=TOKEN, **options)
    assert isinstance(scaler, DatabricksCluster)
    return scaler


# --- HDInsight ---------------------------------------------------------------------------


def test_hdinsight_resize_waits_for_running(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=2, target=2, polls_to_finish=3)
    scaler = hdinsight(serve(fake))
    assert scaler.current_workers() == 2 and scaler.is_ready(2)

    scaler.request(4)
    assert fake.seen[-1] == ("POST", f"{HDI_PATH}/roles/workernode/resize",
                             {"targetInstanceCount": 4})
    assert fake.state == "Resizing"
    assert not scaler.is_ready(4)  # read 1 of 3: the role already targets 4, but Resizing
    status = scaler.wait(4, timeout_s=10, poll_s=POLL_S)
    assert (status.state, status.running, status.workers) == ("Running", True, 4)
    gets = [s for s in fake.seen if s[0] == "GET"]
    assert len(gets) == 3 + 3  # three reads before the resize (one inside request), three after
    assert fake.errors == []


def test_hdinsight_request_is_idempotent(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=3, target=3)
    scaler = hdinsight(serve(fake))
    scaler.request(3)
    assert [s[0] for s in fake.seen] == ["GET"]  # already at 3: no resize sent
    assert fake.errors == []


def test_hdinsight_never_resized_times_out(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=2, target=2, stuck=True)
    scaler = hdinsight(serve(fake))
    scaler.request(5)
    with pytest.raises(ClusterTimeout) as caught:
        scaler.wait(5, timeout_s=0.3, poll_s=POLL_S)
    message = str(caught.value)
    assert f"HDInsight cluster {RG}/{NAME} did not reach 5 worker(s) within 0.3 s" in message
    assert "state Resizing/InProgress" in message
    assert caught.value.target == 5 and caught.value.last_seen == 5  # ARM's target count
    assert TOKEN not in message
    assert fake.errors == []


def test_hdinsight_transient_errors_are_retried_and_auth_errors_are_not(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=2, target=2, fail_next_gets=2)
    scaler = hdinsight(serve(fake))
    assert scaler.wait(2, timeout_s=10, poll_s=POLL_S).workers == 2  # two 503s, then fine
    assert [s[0] for s in fake.seen] == ["GET"] * 3

    calls: list[int] = []

    def stale_token() -> str:  # a callable is asked on every call (azure-identity refreshes)
        calls.append(1)
        return "expired"

    bad = make_scaler("hdinsight", subscription_id=SUB, resource_group=RG, cluster_name=NAME,
                      token=stale_token, endpoint=serve(FakeCluster("hdinsight")))
    with pytest.raises(ClusterError) as caught:
        bad.wait(2, timeout_s=10, poll_s=POLL_S)
    assert not caught.value.transient and "HTTP 401" in str(caught.value)
    assert "expired" not in str(caught.value)
    assert calls == [1]  # not retried until the deadline


# --- Databricks --------------------------------------------------------------------------


def test_databricks_resize_waits_for_executors(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=0, target=0, polls_to_finish=2)
    scaler = databricks(serve(fake))
    assert scaler.current_workers() == 0 and scaler.is_ready(0)

    scaler.request(3)
    assert fake.seen[-1] == ("POST", "/api/2.1/clusters/resize",
                             {"cluster_id": CLUSTER_ID, "num_workers": 3})
    first = scaler.status()  # RESIZING: num_workers says 3 at once, no executor up yet
    assert (first.state, first.workers, first.desired) == ("RESIZING", 0, 3)
    assert not first.ready_for(3)
    status = scaler.wait(3, timeout_s=10, poll_s=POLL_S)
    assert (status.state, status.workers, status.desired) == ("RUNNING", 3, 3)

    scaler.scale(1, timeout_s=10, poll_s=POLL_S)  # and back down
    assert (fake.workers, fake.state) == (1, "RUNNING")
    assert fake.errors == []


def test_databricks_never_resized_times_out(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=1, target=1, stuck=True)
    scaler = databricks(serve(fake))
    with pytest.raises(ClusterTimeout) as caught:
        scaler.scale(4, timeout_s=0.3, poll_s=POLL_S)
    message = str(caught.value)
    assert f"Databricks cluster {CLUSTER_ID}" in message
    assert "did not reach 4 worker(s)" in message
    assert "last seen 1 worker(s), state RESIZING, heading for 4" in message
    assert (caught.value.target, caught.value.last_seen) == (4, 1)
    assert fake.errors == []


def test_databricks_terminated_cluster_is_not_resized(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=0, target=2, state="TERMINATED")
    scaler = databricks(serve(fake))
    with pytest.raises(ClusterError, match="is TERMINATED; only a running cluster") as caught:
        scaler.request(2)
    assert not caught.value.transient
    assert [s[0] for s in fake.seen] == ["GET"]
    assert fake.errors == []


def test_databricks_api_errors_carry_the_apis_message(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=1, target=1)
    scaler = databricks(serve(fake))
    with pytest.raises(ClusterError) as caught:
        scaler.request(500)
    message = str(caught.value)
    assert "HTTP 400" in message and "INVALID_PARAMETER_VALUE: num_workers exceeds" in message
    assert not caught.value.transient and TOKEN not in message
    assert fake.errors == []


def test_databricks_settings_from_the_environment(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCluster("databricks", workers=2, target=2)
    monkeypatch.setenv("DATABRICKS_HOST", serve(fake))
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    scaler = make_scaler("databricks", cluster_id=CLUSTER_ID)
    assert scaler.is_ready(2)
    assert TOKEN not in repr(scaler) and TOKEN not in scaler.name
    monkeypatch.delenv("DATABRICKS_TOKEN")
    with pytest.raises(ValueError, match="DATABRICKS_TOKEN"):
        make_scaler("databricks", cluster_id=CLUSTER_ID)
    assert fake.errors == []


# --- Where the token goes ------------------------------------------------------------------


def test_requests_go_to_the_configured_host_only(serve: Any) -> None:
    for kind, build in (("hdinsight", hdinsight), ("databricks", databricks)):
        fake = FakeCluster(kind, workers=1, target=1)
        url = serve(fake)
        build(url).scale(2, timeout_s=10, poll_s=POLL_S)
        assert fake.hosts == {urlsplit(url).netloc}
        assert fake.errors == []


@pytest.mark.parametrize("url", [
    "http://management.example.com",  # a token in clear text over the network
    "ftp://127.0.0.1",
    "https://user:hunter2@example.com",  # could hide the real host
    "https://example.com?x=1",
    "https://example.com#",
    "https://",
])
def test_a_token_is_sent_to_https_or_loopback_only(url: str) -> None:
    for build in (hdinsight, databricks):
        with pytest.raises(ValueError, match="must be") as caught:
            build(url)
        assert "hunter2" not in str(caught.value)
    assert databricks("http://localhost:1").host == "http://localhost:1"
    assert databricks("adb-1.azuredatabricks.net/").host == "https://adb-1.azuredatabricks.net"


@pytest.mark.parametrize("field_name", ["subscription_id", "resource_group", "cluster_name"])
def test_hdinsight_names_cannot_change_the_resource_path(field_name: str) -> None:
    names = {"subscription_id": SUB, "resource_group": RG, "cluster_name": NAME}
    for bad in ("../other", "a/b", "x?api-version=1", "%2e%2e"):
        with pytest.raises(ValueError, match=f"{field_name} may hold only"):
            make_scaler("hdinsight", **{**names, field_name: bad}, token=TOKEN)


def test_no_cluster_and_unknown_backends() -> None:
    scaler = make_scaler("none")
    scaler.request(8)
    assert scaler.is_ready(8)
    assert scaler.wait(8, timeout_s=0, poll_s=1).state == "local"
    with pytest.raises(ValueError, match="non-negative integer"):
        scaler.request(-1)
    with pytest.raises(ValueError, match="unknown cluster backend 'emr'"):
        make_scaler("emr")
    with pytest.raises(ValueError, match="takes no options"):
        make_scaler("none", workers=2)
