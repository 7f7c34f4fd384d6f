"""What every cluster backend offers: read the worker count, start a resize, wait for it.

A resize is two steps on purpose: :meth:`ClusterScaler.request` starts it and returns at
once, :meth:`ClusterScaler.is_ready` checks it. An orchestrator can then request in one
place and poll somewhere else (Airflow's triggerer), and a retried request is harmless:
every backend skips the call when the cluster already has, or is already heading for, the
target size.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

# Hosts a bearer token may reach over plain http: this machine (local fakes in tests).
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class ClusterError(RuntimeError):
    """A cluster API call failed; the message names the cluster and the call.

    Attributes:
        transient: True when trying again later may succeed (connection errors, HTTP 429
            and 5xx, a cluster busy with another operation); waits keep polling through
            these and fail on the others at once.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ClusterTimeout(TimeoutError):
    """The cluster did not reach the requested size in time; the message says how far it got.

    Attributes:
        cluster: the cluster's description (no credentials).
        target: the worker count that was waited for.
        last_seen: the last worker count read, or None when no read succeeded.
    """

    def __init__(self, message: str, *, cluster: str, target: int, last_seen: int | None) -> None:
        super().__init__(message)
        self.cluster = cluster
        self.target = target
        self.last_seen = last_seen


@dataclass(frozen=True)
class ClusterStatus:
    """One reading of a cluster.

    Attributes:
        state: the backend's own state word ("ALIVE", "Running", "RESIZING", ...).
        running: whether that state means the cluster accepts work.
        workers: worker nodes registered and usable now.
        desired: the size the cluster is heading for, when the backend reports one
            separately from ``workers`` (Databricks' ``num_workers``); None otherwise.
    """

    state: str
    running: bool
    workers: int
    desired: int | None = None

    def ready_for(self, target: int) -> bool:
        """Whether the cluster is running with exactly ``target`` workers, and not resizing."""
        return (
            self.running
            and self.workers == target
            and (self.desired is None or self.desired == target)
        )


def check_target(target: int) -> int:
    """Validate a worker count.

    Raises:
        ValueError: ``target`` is not a non-negative integer.
    """
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target worker count must be a non-negative integer, got {target!r}")
    return target


class ClusterScaler(ABC):
    """A cluster whose worker count can be changed.

    Subclasses implement :meth:`status` and :meth:`request`; the rest is shared.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """The cluster, as error messages and logs name it (never with credentials)."""

    @abstractmethod
    def status(self) -> ClusterStatus:
        """Read the cluster's state and worker count (one API call).

        Raises:
            ClusterError: the cluster cannot be read.
        """

    @abstractmethod
    def request(self, target: int) -> None:
        """Start resizing the cluster to ``target`` workers; returns without waiting.

        Raises:
            ValueError: ``target`` is not allowed for this cluster.
            ClusterError: the cluster refused or could not be reached.
        """

    def current_workers(self) -> int:
        """Worker nodes registered now."""
        return self.status().workers

    def is_ready(self, target: int) -> bool:
        """Whether the cluster is running with exactly ``target`` workers registered."""
        return self.satisfies(self.status(), check_target(target))

    def satisfies(self, status: ClusterStatus, target: int) -> bool:
        """Whether ``status`` (one reading) means the resize to ``target`` is done."""
        return status.ready_for(target)

    def diagnostics(self) -> str:
        """Extra words for a timeout message (where to look next); empty by default."""
        return ""

    def timeout_error(
        self,
        target: int,
        timeout_s: float,
        last: ClusterStatus | None,
        last_error: str | None = None,
    ) -> ClusterTimeout:
        """The :class:`ClusterTimeout` for a wait that ran out; shared with async pollers."""
        if last is None:
            seen = "the cluster could not be read"
        else:
            seen = f"last seen {last.workers} worker(s), state {last.state}"
            if last.desired is not None:
                seen += f", heading for {last.desired}"
        message = f"{self.name} did not reach {target} worker(s) within {timeout_s:g} s ({seen})"
        if last_error:
            message += f"; last error: {last_error}"
        extra = self.diagnostics()
        if extra:
            message += f"; {extra}"
        return ClusterTimeout(
            message, cluster=self.name, target=target,
            last_seen=last.workers if last is not None else None,
        )

    def wait(
        self,
        target: int,
        timeout_s: float = 900.0,
        poll_s: float = 10.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ClusterStatus:
        """Poll until the cluster runs with ``target`` workers.

        Transient API errors are retried until the deadline; other errors end the wait.

        Args:
            target: worker count to wait for.
            timeout_s: give up after this many seconds.
            poll_s: seconds between reads.
            sleep: the sleep function (tests pass a fake one).

        Returns:
            The status that satisfied the wait.

        Raises:
            ClusterTimeout: the size was not reached in time.
            ClusterError: a non-transient API error.
        """
        check_target(target)
        if timeout_s < 0 or poll_s <= 0:
            raise ValueError(f"need timeout_s >= 0 and poll_s > 0, got {timeout_s}, {poll_s}")
        return self.poll_until(target, time.monotonic() + timeout_s, timeout_s, poll_s,
                               sleep=sleep)

    def poll_until(
        self,
        target: int,
        deadline: float,
        timeout_s: float,
        poll_s: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ClusterStatus:
        """The polling loop of :meth:`wait`, up to ``deadline`` (``time.monotonic()``).

        Backends whose SDK waits for part of the way (Databricks: for RUNNING) call this for
        the rest; ``timeout_s`` is the whole wait's length, for the timeout message.
        """
        last: ClusterStatus | None = None
        last_error: str | None = None
        while True:  # bounded: every pass either returns, raises, or sleeps toward the deadline
            try:
                last = self.status()
            except ClusterError as err:
                if not err.transient:
                    raise
                last_error = str(err)
                log.warning("%s: %s (will retry)", self.name, err)
            else:
                if self.satisfies(last, target):
                    return last
                log.info("%s: %d of %d worker(s), state %s", self.name, last.workers, target,
                         last.state)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.timeout_error(target, timeout_s, last, last_error)
            sleep(min(poll_s, remaining))

    def scale(self, target: int, timeout_s: float = 900.0, poll_s: float = 10.0) -> ClusterStatus:
        """Request ``target`` workers and wait for them (see :meth:`wait`)."""
        self.request(check_target(target))
        return self.wait(target, timeout_s, poll_s)


class NoCluster(ClusterScaler):
    """No cluster to scale (Spark ``local[N]``): every size is ready at once."""

    @property
    def name(self) -> str:
        return "local Spark (no cluster)"

    def status(self) -> ClusterStatus:
        return ClusterStatus(state="local", running=True, workers=0)

    def request(self, target: int) -> None:
        check_target(target)

    def satisfies(self, status: ClusterStatus, target: int) -> bool:
        return True


def check_token_url(url: str, what: str) -> str:
    """``url`` without a trailing slash, when a bearer token may be sent to it.

    That is an ``https://`` URL with a host and nothing that could hide another host
    (credentials, query, fragment); plain ``http://`` only to loopback.

    Args:
        url: the API's base URL.
        what: what the URL is, for the error message ("Databricks host").

    Raises:
        ValueError: the URL does not qualify (the message shows its scheme and host only).
    """
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}"  # never echo user:password@
    if not parts.hostname or any(c in url for c in "@?#"):
        raise ValueError(f"{what} must be a plain https://host URL (no credentials, query or "
                         f"fragment), got {shown}...")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise ValueError(f"{what} must be an https:// URL (a bearer token goes there; plain "
                         f"http only to loopback), got {shown}")
    return url.rstrip("/")


def http_json(
    session: requests.Session,
    method: str,
    url: str,
    *,
    cluster: str,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One JSON call to a cluster API, with failures turned into :class:`ClusterError`.

    Args:
        session: the HTTP session (connection reuse across polls).
        method: HTTP method.
        url: full URL (no query string; pass ``params``).
        cluster: the cluster's name for error messages.
        headers: extra headers (the auth header goes here; it is never put in a message).
        params: query parameters.
        body: JSON body.
        timeout_s: connect and read timeout for this one call.

    Returns:
        The decoded JSON object; ``{}`` for an empty body (202 Accepted, for instance).

    Raises:
        ClusterError: unreachable, an HTTP error status, or a body that is not a JSON object.
    """
    import requests

    what = f"{method} {url}"
    try:
        response = session.request(
            method, url, headers=headers, params=params, json=body, timeout=timeout_s
        )
    except requests.RequestException as err:  # connection refused, DNS, timeouts
        raise ClusterError(f"{cluster}: {what} failed: {err}", transient=True) from err
    if response.status_code >= 400:
        # 409: another operation is running on the cluster; 429/5xx: throttled or a hiccup.
        transient = response.status_code in (409, 429) or response.status_code >= 500
        raise ClusterError(
            f"{cluster}: {what} returned HTTP {response.status_code}: "
            f"{_error_text(response)}",
            transient=transient,
        )
    if not response.content.strip():
        return {}
    try:
        data = response.json()
    except ValueError as err:
        raise ClusterError(f"{cluster}: {what} returned a body that is not JSON") from err
    if not isinstance(data, dict):
        raise ClusterError(f"{cluster}: {what} returned {type(data).__name__}, not an object")
    return data


def _error_text(response: requests.Response) -> str:
    """The API's own error words (Azure ``error.message``, Databricks ``message``), short."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or response.reason
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict):  # Azure Resource Manager
            return f"{inner.get('code', '')}: {inner.get('message', '')}"[:300]
        if "message" in data:  # Databricks
            return f"{data.get('error_code', '')}: {data['message']}"[:300]
    return str(data)[:300]
