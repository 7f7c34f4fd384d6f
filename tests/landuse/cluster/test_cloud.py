"""HDInsight (azure-mgmt-hdinsight) and Databricks (databricks-sdk) backends against local
fakes of each API (``tests/cluster_fakes.py``).

The fakes check every request the SDKs send (method, path, query, JSON body, bearer token,
the Databricks workspace header) and refuse anything else with a 4xx that is recorded;
each test asserts none was. HDInsight's resize is a long-running operation the SDK's poller
follows through the fake's ``Azure-AsyncOperation`` and ``Location`` headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import pytest

from cluster_fakes import CLUSTER_ID, HDI_PATH, NAME, RG, SUB, TOKEN, FakeCluster, StaticToken
from cluster_fakes import serve as serve_fake
from landuse.cluster import ClusterError, ClusterTimeout, make_scaler
from landuse.cluster.databricks import DatabricksCluster
from landuse.cluster.hdinsight import HDInsightCluster

POLL_S = 0.02
RESIZE = f"{HDI_PATH}/roles/workernode/resize"


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start fakes on free loopback ports; yields ``serve(fake) -> base URL``."""
    with ExitStack() as stack:
        yield lambda fake: stack.enter_context(serve_fake(fake)).url


def hdinsight(endpoint: str, **options: Any) -> HDInsightCluster:
    options = {"credential": StaticToken(), "polling_interval_s": POLL_S, **options}
    scaler = make_scaler("hdinsight", subscription_id=SUB, resource_group=RG, cluster_name=NAME,
                         endpoint=endpoint, **options)
    assert isinstance(scaler, HDInsightCluster)
    return scaler


def databricks(host: str, **options: Any) -> DatabricksCluster:
    scaler = make_scaler("databricks", host=host, cluster_id=CLUSTER_ID,
                         **{"token": TOKEN, **options})
    assert isinstance(scaler, DatabricksCluster)
    return scaler


# --- HDInsight ---------------------------------------------------------------------------


def test_hdinsight_resize_follows_the_operation_and_counts_live_hosts(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=2, target=2, polls_to_finish=3)
    credential = StaticToken()
    scaler = hdinsight(serve(fake), credential=credential)
    assert scaler.current_workers() == 2 and scaler.is_ready(2)

    scaler.request(4)
    assert ("POST", RESIZE, {"targetInstanceCount": 4}) in fake.seen
    first = scaler.status()  # the role targets 4 at once; the hosts are still 2
    assert (first.running, first.workers, first.desired) == (False, 2, 4)
    assert "resize operation InProgress" in first.state
    status = scaler.wait(4, timeout_s=10, poll_s=POLL_S)
    assert (status.state, status.running, status.workers, status.desired) == (
        "Running", True, 4, 4)
    paths = {path for _, path, _ in fake.seen}
    # The SDK's poller followed the operation, then read its final Location.
    assert f"{HDI_PATH}/azureasyncoperations/resize-1" in paths
    assert f"{HDI_PATH}/operationresults/resize-1" in paths
    assert f"{HDI_PATH}/listHosts" in paths
    assert credential.scopes and set(credential.scopes) == {(f"{fake_url(fake)}/.default",)}
    assert fake.resizes == [4] and fake.errors == []


def fake_url(fake: FakeCluster) -> str:
    """The base URL the fake was reached at (from the Host headers it recorded)."""
    (netloc,) = set(fake.hosts)
    return f"http://{netloc}"


def test_hdinsight_failed_operation_fails_the_wait_with_azures_words(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=2, target=2, polls_to_finish=1,
                       operation_fails=True)
    scaler = hdinsight(serve(fake))
    scaler.request(3)
    with pytest.raises(ClusterError) as caught:
        scaler.wait(3, timeout_s=10, poll_s=POLL_S)
    # from the operation's poller, or from the cluster's failed provisioning if that is
    # read first: Azure's own words either way
    assert str(caught.value).startswith(f"HDInsight cluster {RG}/{NAME}")
    assert str(caught.value).endswith("InsufficientCoreQuota: the subscription has no cores left")
    assert not caught.value.transient
    assert fake.errors == []


def test_a_wait_without_the_poller_still_ends_on_a_failed_resize(serve: Any) -> None:
    # A deferred wait polls from the triggerer with a scaler of its own, which never saw
    # the resize's poller: the cluster's failed provisioning ends it, with Azure's errors.
    fake = FakeCluster("hdinsight", workers=2, target=2, polls_to_finish=1,
                       operation_fails=True)
    endpoint = serve(fake)
    hdinsight(endpoint).request(3)
    waiter = hdinsight(endpoint)
    with pytest.raises(ClusterError) as caught:
        waiter.wait(3, timeout_s=10, poll_s=POLL_S)
    assert str(caught.value) == (f"HDInsight cluster {RG}/{NAME} is Running, provisioning "
                                 "Failed: InsufficientCoreQuota: the subscription has no "
                                 "cores left")
    assert not caught.value.transient and fake.workers == 2


def test_hdinsight_request_is_idempotent(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=3, target=3)
    scaler = hdinsight(serve(fake))
    scaler.request(3)
    assert [s[0] for s in fake.seen] == ["GET"]  # already at 3: no resize sent
    assert fake.errors == []


def test_hdinsight_never_resized_times_out_with_the_live_count(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=2, target=2, capacity=2)
    scaler = hdinsight(serve(fake))
    scaler.request(5)
    with pytest.raises(ClusterTimeout) as caught:
        scaler.wait(5, timeout_s=0.3, poll_s=POLL_S)
    message = str(caught.value)
    assert f"HDInsight cluster {RG}/{NAME} did not reach 5 worker(s) within 0.3 s" in message
    assert "last seen 2 worker(s), state Resizing/InProgress" in message
    assert "heading for 5" in message
    assert caught.value.target == 5 and caught.value.last_seen == 2  # live hosts, not target
    assert TOKEN not in message
    assert fake.errors == []


def test_hdinsight_transient_errors_are_retried_and_auth_errors_are_not(serve: Any) -> None:
    fake = FakeCluster("hdinsight", workers=2, target=2, fail_next_gets=1)
    assert hdinsight(serve(fake), retries=1).status().workers == 2  # the SDK retried the 503
    assert [s[0] for s in fake.seen] == ["GET", "GET", "POST"]

    fake = FakeCluster("hdinsight", workers=2, target=2, fail_next_gets=2)
    scaler = hdinsight(serve(fake), retries=0)
    with pytest.raises(ClusterError) as caught:
        scaler.status()
    assert caught.value.transient and "HTTP 503" in str(caught.value)
    assert scaler.wait(2, timeout_s=10, poll_s=POLL_S).workers == 2  # one more 503, then fine

    stale = StaticToken("expired")
    bad = hdinsight(serve(FakeCluster("hdinsight")), credential=stale)
    with pytest.raises(ClusterError) as caught:
        bad.wait(2, timeout_s=10, poll_s=POLL_S)
    assert not caught.value.transient and "HTTP 401" in str(caught.value)
    assert "expired" not in str(caught.value)
    assert len(stale.scopes) == 1  # not retried until the deadline


def test_hdinsight_unreachable_endpoint_is_transient() -> None:
    from landuse.cluster.standalone import free_port

    scaler = hdinsight(f"http://127.0.0.1:{free_port()}", retries=0, http_timeout_s=2)
    with pytest.raises(ClusterError) as caught:
        scaler.status()
    assert caught.value.transient and "reading the cluster failed" in str(caught.value)


# --- Databricks --------------------------------------------------------------------------


def test_databricks_resize_waits_for_running_and_executors(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=0, target=0, polls_to_finish=2)
    scaler = databricks(serve(fake))
    assert scaler.current_workers() == 0 and scaler.is_ready(0)

    scaler.request(3)
    assert fake.seen[-1] == ("POST", "/api/2.1/clusters/resize",
                             {"cluster_id": CLUSTER_ID, "num_workers": 3})
    first = scaler.status()  # RESIZING: num_workers says 3 at once, no executor up yet
    assert (first.state, first.workers, first.desired) == ("RESIZING", 0, 3)
    assert not first.ready_for(3)
    status = scaler.wait(3, timeout_s=20, poll_s=POLL_S)
    assert (status.state, status.workers, status.desired) == ("RUNNING", 3, 3)

    fake.polls_to_finish = 1
    scaler.scale(1, timeout_s=20, poll_s=POLL_S)  # and back down
    assert (fake.workers, fake.state) == (1, "RUNNING")
    assert fake.resizes == [3, 1] and fake.errors == []


def test_databricks_never_resized_times_out(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=1, target=1, capacity=1)
    scaler = databricks(serve(fake))
    with pytest.raises(ClusterTimeout) as caught:
        scaler.scale(4, timeout_s=0.3, poll_s=POLL_S)
    message = str(caught.value)
    assert f"Databricks cluster {CLUSTER_ID}" in message
    assert "did not reach 4 worker(s)" in message
    assert "last seen 1 worker(s), state RESIZING, heading for 4" in message
    assert (caught.value.target, caught.value.last_seen) == (4, 1)
    assert fake.errors == []


def test_databricks_terminated_cluster_is_not_resized_nor_waited_for(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=0, target=2, state="TERMINATED")
    scaler = databricks(serve(fake))
    with pytest.raises(ClusterError, match="is TERMINATED; only a running cluster") as caught:
        scaler.request(2)
    assert not caught.value.transient
    assert [s[0] for s in fake.seen] == ["GET"]
    with pytest.raises(ClusterError, match="is TERMINATED") as caught:
        scaler.status()
    assert not caught.value.transient
    with pytest.raises(ClusterError) as caught:
        scaler.wait(2, timeout_s=10, poll_s=POLL_S)  # at once, not at the deadline
    assert str(caught.value).endswith(
        "stopped while waiting: failed to reach RUNNING, got State.TERMINATED")
    assert fake.resizes == [] and fake.errors == []


def test_databricks_api_errors_carry_the_apis_message(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=1, target=1)
    scaler = databricks(serve(fake))
    with pytest.raises(ClusterError) as caught:
        scaler.request(500)
    message = str(caught.value)
    assert "the resize failed: INVALID_PARAMETER_VALUE: num_workers exceeds the quota" in message
    assert not caught.value.transient and TOKEN not in message

    with pytest.raises(ClusterError) as caught:
        databricks(scaler.host, token="wrong").status()
    assert not caught.value.transient and "bad or missing bearer token" in str(caught.value)
    assert "wrong" not in str(caught.value)
    fake.errors.remove(f"GET /api/2.1/clusters/get?cluster_id={CLUSTER_ID}: "
                       "bad or missing bearer token")
    assert fake.errors == []


def test_databricks_sdk_retries_transient_errors(serve: Any) -> None:
    fake = FakeCluster("databricks", workers=2, target=2, fail_next_gets=2)
    assert databricks(serve(fake)).status().workers == 2  # two 503s, retried by the SDK
    assert [s[0] for s in fake.seen] == ["GET"] * 3
    assert fake.errors == []


def test_databricks_settings_from_the_environment(
    serve: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    fake = FakeCluster("databricks", workers=2, target=2)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg of the machine's user
    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID", "ARM_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_HOST", serve(fake))
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    scaler = make_scaler("databricks", cluster_id=CLUSTER_ID)
    assert scaler.is_ready(2)
    assert TOKEN not in repr(scaler) and TOKEN not in scaler.name
    monkeypatch.delenv("DATABRICKS_TOKEN")
    with pytest.raises(ValueError, match=r"no credentials for Databricks.*DATABRICKS_TOKEN"):
        make_scaler("databricks", cluster_id=CLUSTER_ID)
    with pytest.raises(ValueError, match="needs both client_id and client_secret"):
        make_scaler("databricks", cluster_id=CLUSTER_ID, client_id="sp-id")
    assert fake.errors == []


# --- Where the credentials go -------------------------------------------------------------


def test_requests_go_to_the_configured_host_only(serve: Any) -> None:
    for kind, build in (("hdinsight", hdinsight), ("databricks", databricks)):
        fake = FakeCluster(kind, workers=1, target=1, polls_to_finish=1)
        url = serve(fake)
        build(url).scale(2, timeout_s=20, poll_s=POLL_S)
        assert set(fake.hosts) == {urlsplit(url).netloc}
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


def test_hosts_are_normalised(serve: Any) -> None:
    api = serve(FakeCluster("databricks"))
    assert databricks(f"{api}/").host == api
    netloc = urlsplit(api).netloc
    assert databricks(f"http://localhost:{netloc.split(':')[1]}").host.startswith("http://local")


@pytest.mark.parametrize("field_name", ["subscription_id", "resource_group", "cluster_name"])
def test_hdinsight_names_cannot_change_the_resource_path(field_name: str) -> None:
    names = {"subscription_id": SUB, "resource_group": RG, "cluster_name": NAME}
    for bad in ("../other", "a/b", "x?api-version=1", "%2e%2e"):
        with pytest.raises(ValueError, match=f"{field_name} may hold only"):
            make_scaler("hdinsight", **{**names, field_name: bad}, credential=StaticToken())


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
