"""Airflow local settings for the project: the log servers' bind address.

Airflow imports ``airflow_local_settings`` in every component at start-up (the plugins folder
is on ``sys.path`` by then). The only setting here: ``[logging] worker_log_server_host``
(``AIRFLOW__LOGGING__WORKER_LOG_SERVER_HOST``), the address the scheduler's (LocalExecutor)
and the triggerer's log servers listen on (ports ``[logging] worker_log_server_port``, 8793,
and ``trigger_log_server_port``, 8794).

Airflow 3.3.2 has no such option: ``airflow.utils.serve_logs.core.serve_logs`` calls
``uvicorn.run(..., host="")``, that is every interface (0.0.0.0 and ::), and uvicorn reads no
bind address from the environment when it is called from Python. The option name is the one
proposed upstream in apache/airflow#60117 (closed; not in 3.3.2). When it is set, the log server's
``uvicorn.run`` call gets that host; when it is not (the docker-compose deployment, where the
API server reaches the workers' log servers over the compose network), nothing changes.
``scripts/env.sh`` and ``tests/stack`` set it to 127.0.0.1: on one machine the API server
reads finished tasks' logs from the shared log folder and a running task's from the log
server at ``ti.hostname`` (the FQDN, which must then resolve to a loopback address).
"""

from __future__ import annotations

import functools

__all__: list[str] = []  # Airflow copies public names of this module into airflow.settings

_LOG_SERVER_APP = "airflow.utils.serve_logs.log_server:get_app"


def _bind_log_servers() -> None:
    from airflow.configuration import conf

    host = (conf.get("logging", "worker_log_server_host", fallback="") or "").strip()
    if not host:
        return
    import uvicorn

    if getattr(uvicorn.run, "_log_server_host", None) == host:
        return  # already wrapped (the plugins manager executes this file a second time)
    run = getattr(uvicorn.run, "__wrapped__", uvicorn.run)

    @functools.wraps(run)
    def run_log_server_on_host(app, *args, **kwargs):  # type: ignore[no-untyped-def]
        if app == _LOG_SERVER_APP and not kwargs.get("host"):
            kwargs["host"] = host
        return run(app, *args, **kwargs)

    run_log_server_on_host._log_server_host = host  # type: ignore[attr-defined]
    uvicorn.run = run_log_server_on_host


_bind_log_servers()
