"""ScaleClusterOperator and ClusterSizeTrigger against local fakes of the cluster APIs.

The fakes (``tests/cluster_fakes.py``: ``http.server`` on 127.0.0.1, in a thread) check
paths, bearer tokens and bodies of what databricks-sdk and azure-mgmt-hdinsight send, and
move a resized cluster to its new size after a few reads (or never, past its capacity).
They record the ``Host`` header of every request, so a test can show where requests went;
a second fake plays the host a templated option would redirect the token to.
Credentials come from ``AIRFLOW_CONN_*`` variables, as in production from a secrets
backend; no metadata DB is needed (the folder's conftest sets a throw-away Airflow home).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred
from airflow.triggers.base import TriggerEvent

from cluster_fakes import NAME, RG, SUB, FakeApi, FakeCluster, StaticToken, serve
from landuse.cluster.standalone import free_port
from landuse_airflow.operators.cluster import ScaleClusterOperator
from landuse_airflow.triggers.cluster import ClusterSizeTrigger

TOKEN = "dapi-test-token-not-a-secret"
CLUSTER_ID = "0123-456789-scoring"
CONN_ID = "landuse_databricks"
POLL_S = 0.05
Api = FakeApi


def fake_databricks() -> FakeCluster:
    """A running one-worker Databricks cluster."""
    return FakeCluster("databricks", workers=1, target=1, cluster_id=CLUSTER_ID, token=TOKEN)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The fake API, and a connection pointing at it."""
    with serve(fake_databricks()) as served:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
            {"conn_type": "generic", "host": served.url, "password": TOKEN,
             "extra": {"cluster_id": CLUSTER_ID}}
        ))
        yield served


@pytest.fixture
def elsewhere() -> Iterator[Api]:
    """Another fake API: where a templated option would send the connection's token."""
    with serve(fake_databricks()) as served:
        yield served


def operator(**kwargs: Any) -> ScaleClusterOperator:
    options: dict[str, Any] = {"task_id": "grow_cluster", "backend": "databricks",
                               "conn_id": CONN_ID, "target_workers": 3, "timeout_s": 30,
                               "poll_s": POLL_S}
    return ScaleClusterOperator(**{**options, **kwargs})


def first_event(trigger: ClusterSizeTrigger, limit_s: float = 15.0) -> TriggerEvent:
    """The trigger's first event, as the triggerer would take it (bounded in time)."""

    async def take() -> TriggerEvent:
        agen = trigger.run()
        try:
            return await asyncio.wait_for(anext(agen), timeout=limit_s)
        finally:
            await agen.aclose()

    return asyncio.run(take())


def test_execute_requests_the_resize_and_defers(api: Api) -> None:
    op = operator(target_workers="{{ params.workers }}")
    op.render_template_fields({"params": {"workers": 3}})
    assert op.target_workers == "3"
    before = time.time()
    with pytest.raises(TaskDeferred) as caught:
        op.execute({})
    deferred = caught.value
    assert api.fake.resizes == [3]  # requested before deferring, exactly once
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout == timedelta(seconds=30 + POLL_S + 60)
    trigger = deferred.trigger
    assert isinstance(trigger, ClusterSizeTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "landuse_airflow.triggers.cluster.ClusterSizeTrigger"
    assert before + 30 <= kwargs.pop("deadline") <= time.time() + 30
    assert kwargs == {"backend": "databricks", "target_workers": 3, "timeout_s": 30.0,
                      "poll_s": POLL_S, "scaler_options": {}, "conn_id": CONN_ID}
    assert TOKEN not in json.dumps(kwargs)  # the triggerer reads the connection itself
    assert api.fake.errors == []


def test_trigger_fires_ok_once_the_workers_are_up(api: Api) -> None:
    api.fake.polls_to_finish = 3
    with pytest.raises(TaskDeferred) as caught:
        operator().execute({})
    _, kwargs = caught.value.trigger.serialize()
    trigger = ClusterSizeTrigger(**kwargs)  # rebuilt from its kwargs, as the triggerer does
    event = first_event(trigger)
    assert event.payload["status"] == "ok"
    assert event.payload["workers"] == 3
    assert (api.fake.state, api.fake.workers) == ("RUNNING", 3)
    assert operator().execute_complete({}, event.payload) == 3
    assert api.fake.errors == []


def test_trigger_fires_timeout_and_the_task_fails_with_its_message(api: Api) -> None:
    api.fake.capacity = api.fake.workers  # no more nodes to be had
    with pytest.raises(TaskDeferred) as caught:
        operator(timeout_s=0.5).execute({})
    event = first_event(caught.value.trigger)
    payload = event.payload
    assert payload["status"] == "timeout"
    assert payload["workers"] == 1
    assert f"Databricks cluster {CLUSTER_ID}" in payload["message"]
    assert "did not reach 3 worker(s) within 0.5 s" in payload["message"]
    assert "last seen 1 worker(s), state RESIZING" in payload["message"]
    # The wait spent its patience: fail without retries.
    with pytest.raises(AirflowFailException, match="did not reach 3 worker"):
        operator().execute_complete({}, payload)
    assert api.fake.errors == []


def test_trigger_reports_a_missing_connection(api: Api) -> None:
    trigger = ClusterSizeTrigger(backend="databricks", target_workers=2,
                                 deadline=time.time() + 5, timeout_s=5, poll_s=POLL_S,
                                 conn_id="no_such_connection")
    payload = first_event(trigger).payload
    assert payload["status"] == "error"
    assert "no_such_connection" in payload["message"]
    with pytest.raises(AirflowException, match="cannot set up the databricks scaler"):
        operator().execute_complete({}, payload)


def test_waiting_in_the_task(api: Api) -> None:
    assert operator(deferrable=False).execute({}) == 3
    assert api.fake.resizes == [3]
    api.fake.capacity = api.fake.workers  # no more nodes to be had
    with pytest.raises(AirflowFailException, match="did not reach 5 worker"):
        operator(deferrable=False, target_workers=5, timeout_s=0.3).execute({})


def test_backend_connection_and_timeout_come_from_templates(api: Api) -> None:
    """A DAG takes the cluster from its params: rendered values, an empty connection id
    meaning none."""
    op = operator(backend="{{ params.backend }}", conn_id="{{ params.conn or '' }}",
                  timeout_s="{{ params.timeout }}")
    op.render_template_fields({"params": {"backend": "Databricks", "conn": CONN_ID,
                                          "timeout": 45}})
    with pytest.raises(TaskDeferred) as caught:
        op.execute({})
    _, kwargs = caught.value.trigger.serialize()
    assert (kwargs["backend"], kwargs["conn_id"], kwargs["timeout_s"]) == (
        "databricks", CONN_ID, 45.0)
    assert caught.value.timeout == timedelta(seconds=45 + POLL_S + 60)
    local = ScaleClusterOperator(task_id="local", backend="{{ params.backend }}",
                                 conn_id="{{ params.conn or '' }}", target_workers=2)
    local.render_template_fields({"params": {"backend": "none", "conn": None}})
    assert local.conn_id == "" and local.execute({}) == 2
    bad = operator(backend="{{ params.backend }}")
    bad.render_template_fields({"params": {"backend": "emr"}})
    with pytest.raises(AirflowFailException, match="unknown cluster backend 'emr'"):
        bad.execute({})
    assert api.fake.resizes == [3]


def test_wait_false_only_requests(api: Api) -> None:
    """A setup task that asks for the size; a later task waits (and re-asks harmlessly)."""
    api.fake.polls_to_finish = 1000  # the resize takes its time
    assert operator(wait=False).execute({}) == 3
    assert api.fake.resizes == [3] and api.fake.workers == 1  # asked, not yet there
    with pytest.raises(TaskDeferred):
        operator().execute({})
    assert api.fake.resizes == [3]  # the cluster is already heading for 3: not resized again


def test_standalone_needs_a_connection(tmp_path: Path) -> None:
    """Where the master is comes from a connection only: no default master is assumed."""
    op = ScaleClusterOperator(task_id="grow", backend="standalone", target_workers=1)
    with pytest.raises(AirflowFailException, match="standalone backend needs conn_id"):
        op.execute({})


def test_already_at_size_does_not_defer(api: Api) -> None:
    assert operator(target_workers=1).execute({}) == 1
    assert api.fake.resizes == []
    local = ScaleClusterOperator(task_id="local", backend="none", target_workers=4)
    assert local.execute({}) == 4


def test_bad_parameters_fail_fast(api: Api) -> None:
    with pytest.raises(ValueError, match="unknown cluster backend 'emr'"):
        operator(backend="emr")
    with pytest.raises(ValueError, match="must not hold credentials"):
        operator(scaler_options={"token": TOKEN})
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        operator(timeout_s=0)
    with pytest.raises(AirflowFailException, match="timeout_s must be a number"):
        operator(timeout_s="{{ params.t }}", target_workers=2).execute({})  # unrendered
    for bad in ("many", "-1", 2.5):
        with pytest.raises(AirflowFailException, match="non-negative integer"):
            operator(target_workers=bad).execute({})
    assert api.fake.resizes == []


@pytest.fixture
def spark_master() -> Iterator[Api]:
    """A fake Spark standalone master's /json/: alive, no worker ever registers."""
    with serve(FakeCluster("spark-master")) as served:
        yield served


def test_on_kill_stops_the_standalone_workers_this_task_started(
    spark_master: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed scale-up: the workers it started go too. The master is the fake's /json/
    (no worker ever registers there), the workers are real JVM processes."""
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_KILL_TEST", json.dumps(
        {"conn_type": "spark", "host": "spark://127.0.0.1", "port": free_port(),
         "extra": {"master_web_url": spark_master.url, "work_dir": str(tmp_path)}}
    ))
    op = ScaleClusterOperator(
        task_id="grow_local", backend="standalone", target_workers=1, deferrable=False,
        timeout_s=3, poll_s=0.2, conn_id="spark_kill_test",
        scaler_options={"memory_per_worker": "512m"},
    )
    op.on_kill()  # before execute: nothing built, nothing to stop
    assert "scaler" not in op.__dict__
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute({})
        except BaseException as err:  # the timeout that follows the kill
            errors.append(err)

    task = threading.Thread(target=run, daemon=True)
    task.start()
    deadline = time.monotonic() + 20
    while "scaler" not in op.__dict__ or not op.scaler.owned_workers():
        assert time.monotonic() < deadline, "the worker was never started"
        time.sleep(0.1)
    (pid,) = op.scaler.owned_workers()
    op.on_kill()
    assert op.scaler.owned_workers() == []
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    # Airflow would now end the task process; here the in-task wait runs out instead.
    task.join(timeout=30)
    assert not task.is_alive()
    assert len(errors) == 1 and "did not reach 1 worker(s)" in str(errors[0])


def test_connection_fields_map_to_scaler_options(tmp_path: Path) -> None:
    from airflow.sdk import Connection

    from landuse.cluster.hdinsight import HDInsightCluster
    from landuse.cluster.standalone import StandaloneCluster
    from landuse_airflow.triggers.cluster import build_scaler, connection_options

    spark = Connection(conn_id="spark_local", conn_type="spark", host="spark://127.0.0.1",
                       port=7078, extra=json.dumps({"master_web_url": "http://127.0.0.1:8081",
                                                    "work_dir": str(tmp_path)}))
    scaler = build_scaler("standalone", {"memory_per_worker": "512m"}, spark)
    assert isinstance(scaler, StandaloneCluster)
    assert (scaler.master_url, scaler.master_web_url) == ("spark://127.0.0.1:7078",
                                                          "http://127.0.0.1:8081")
    assert (scaler.work_dir, scaler.memory_per_worker) == (tmp_path, "512m")

    from azure.identity import ClientSecretCredential, DefaultAzureCredential

    # The Azure provider's connection fields: a service principal becomes azure-identity's
    # ClientSecretCredential, handed to the library (which never sees the connection).
    azure = Connection(conn_id="hdi", conn_type="azure", login="client-id",
                       password="client-secret-value",
                       extra=json.dumps({"tenantId": "tenant", "subscriptionId": "sub",
                                         "resource_group": "rg", "cluster_name": "hdi"}))
    options = connection_options("hdinsight", azure)
    assert isinstance(options.pop("credential"), ClientSecretCredential)
    assert options == {"subscription_id": "sub", "resource_group": "rg", "cluster_name": "hdi"}
    with pytest.raises(ValueError, match="must not set endpoint"):
        build_scaler("hdinsight", {"endpoint": "http://127.0.0.1:1"}, azure)
    with pytest.raises(ValueError, match="must not hold credentials"):
        build_scaler("hdinsight", {"credential": StaticToken()}, azure)
    # No service principal: the provider's DefaultAzureCredential (managed identity...).
    managed = Connection(conn_id="hdi", conn_type="azure",
                         extra=json.dumps({"subscription_id": "sub", "resource_group": "rg",
                                           "cluster_name": "hdi",
                                           "endpoint": "http://127.0.0.1:1"}))
    hdi = build_scaler("hdinsight", {"http_timeout_s": 5}, managed)
    assert isinstance(connection_options("hdinsight", managed)["credential"],
                      DefaultAzureCredential)
    assert isinstance(hdi, HDInsightCluster) and hdi.endpoint == "http://127.0.0.1:1"
    assert hdi.http_timeout_s == 5
    assert "client-secret-value" not in repr(hdi) + hdi.name

    # The Databricks provider's fields: a token, or an OAuth service principal.
    oauth = Connection(conn_id="dbx", conn_type="databricks", host="https://adb-1.net",
                       login="sp-id", password="sp-secret",
                       extra=json.dumps({"service_principal_oauth": True, "cluster_id": "c"}))
    assert connection_options("databricks", oauth) == {
        "host": "https://adb-1.net", "cluster_id": "c", "client_id": "sp-id",
        "client_secret": "sp-secret"}
    pat = Connection(conn_id="dbx", conn_type="databricks", host="adb-1.net",
                     extra=json.dumps({"token": "dapi-x", "cluster_id": "c"}))
    assert connection_options("databricks", pat) == {"host": "adb-1.net", "cluster_id": "c",
                                                     "token": "dapi-x"}


@pytest.fixture
def hdinsight(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """A fake HDInsight behind an Azure connection; the credential the hook builds from
    it is swapped for one the fake accepts (a real one would ask Entra ID for a token)."""
    from landuse_airflow.hooks import cluster as hook

    built: list[Any] = []

    def credential(conn: Any) -> StaticToken:
        built.append(conn.login)
        return StaticToken()

    monkeypatch.setattr(hook, "azure_credential", credential)
    with serve(FakeCluster("hdinsight", workers=1, target=1, polls_to_finish=2)) as served:
        monkeypatch.setenv("AIRFLOW_CONN_LANDUSE_HDI_FAKE", json.dumps(
            {"conn_type": "azure", "login": "client-id", "password": "client-secret-value",
             "extra": {"tenantId": "tenant", "subscriptionId": SUB, "resource_group": RG,
                       "cluster_name": NAME, "endpoint": served.url}}))
        yield served
    assert built and set(built) == {"client-id"}  # built from the connection, every time


def test_hdinsight_resize_in_the_task_and_in_the_triggerer(hdinsight: Api) -> None:
    options = {"task_id": "grow", "backend": "hdinsight", "conn_id": "landuse_hdi_fake",
               "timeout_s": 20, "poll_s": POLL_S,
               "scaler_options": {"polling_interval_s": POLL_S, "retries": 0}}
    # In the task: the SDK's poller follows the resize operation, the hosts are counted.
    assert ScaleClusterOperator(**options, target_workers=3, deferrable=False).execute({}) == 3
    assert hdinsight.fake.resizes == [3] and hdinsight.fake.workers == 3
    # Deferred: the triggerer rebuilds the scaler from the connection and counts hosts.
    with pytest.raises(TaskDeferred) as caught:
        ScaleClusterOperator(**options, target_workers=2).execute({})
    _, kwargs = caught.value.trigger.serialize()
    assert "client-secret-value" not in json.dumps(kwargs)
    event = first_event(ClusterSizeTrigger(**kwargs))
    assert event.payload["status"] == "ok" and event.payload["workers"] == 2
    assert hdinsight.fake.resizes == [3, 2]
    assert set(hdinsight.fake.hosts) == {hdinsight.netloc}
    assert hdinsight.fake.errors == []


PLACES = [("databricks", "host"), ("databricks", "cluster_id"),
          ("hdinsight", "endpoint"), ("hdinsight", "subscription_id"),
          ("hdinsight", "resource_group"), ("hdinsight", "cluster_name"),
          ("standalone", "master_url"), ("standalone", "master_web_url"),
          ("standalone", "work_dir"), ("standalone", "spark_home")]


@pytest.mark.parametrize(("backend", "option"), PLACES)
def test_options_naming_a_place_are_refused(
    api: Api, elsewhere: Api, backend: str, option: str
) -> None:
    """Where the cluster is comes from the connection only: at parse time, when the
    trigger is built, and when the scaler is built (rendered options)."""
    from landuse_airflow.triggers.cluster import build_scaler

    message = f"must not set {option}: .* set it on the connection"
    with pytest.raises(ValueError, match=message):
        operator(backend=backend, scaler_options={option: elsewhere.url})
    with pytest.raises(ValueError, match=message):
        ClusterSizeTrigger(backend=backend, target_workers=1, deadline=time.time() + 5,
                           timeout_s=5, poll_s=POLL_S, scaler_options={option: elsewhere.url},
                           conn_id=CONN_ID)
    with pytest.raises(ValueError, match=message):
        build_scaler(backend, {option: elsewhere.url})
    assert api.fake.hosts == [] and elsewhere.fake.hosts == []


def test_a_templated_host_override_fails_the_task_before_any_request(
    api: Api, elsewhere: Api
) -> None:
    """Options that only turn into a place once rendered (here: set after parsing) still
    fail, without retries, and no request reaches either server."""
    op = operator(scaler_options={"http_timeout_s": 5})
    op.scaler_options = {"host": elsewhere.url}  # what a bad template could produce
    with pytest.raises(AirflowFailException, match="must not set host"):
        op.execute({})
    assert api.fake.hosts == [] and elsewhere.fake.hosts == []
    assert api.fake.resizes == [] and elsewhere.fake.resizes == []


def test_requests_go_to_the_connections_host(api: Api, elsewhere: Api) -> None:
    assert operator(deferrable=False, scaler_options={"http_timeout_s": 5}).execute({}) == 3
    assert api.fake.resizes == [3]
    assert api.fake.hosts and set(api.fake.hosts) == {api.netloc}
    assert elsewhere.fake.hosts == []
    assert api.fake.errors == []


def test_no_secret_in_trigger_kwargs_xcom_or_logs(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection's secrets stay in the connection: the serialized trigger (stored in
    the metadata DB) carries its id, and neither the return value (XCom) nor any log line
    or event message holds a secret."""
    secrets = [TOKEN, "client-secret-value"]
    monkeypatch.setenv("AIRFLOW_CONN_LANDUSE_HDI", json.dumps(
        {"conn_type": "generic", "login": "client-id", "password": secrets[1],
         "extra": {"tenant_id": "tenant", "subscription_id": "sub", "resource_group": "rg",
                   "cluster_name": "hdi", "endpoint": "http://127.0.0.1:1"}}
    ))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TaskDeferred) as caught:
        operator(scaler_options={"http_timeout_s": 5}).execute({})
    classpath, kwargs = caught.value.trigger.serialize()
    assert kwargs["conn_id"] == CONN_ID
    assert kwargs["scaler_options"] == {"http_timeout_s": 5}
    event = first_event(ClusterSizeTrigger(**kwargs))
    assert event.payload["status"] == "ok"
    returned = operator().execute_complete({}, event.payload)
    assert returned == 3

    hdi_trigger = ClusterSizeTrigger(backend="hdinsight", target_workers=2,
                                     deadline=time.time() + 5, timeout_s=5, poll_s=POLL_S,
                                     conn_id="landuse_hdi")
    stored = json.dumps([classpath, kwargs, hdi_trigger.serialize(), event.payload, returned])
    for secret in secrets:
        assert secret not in stored
        assert secret not in caplog.text
    assert api.fake.errors == []
