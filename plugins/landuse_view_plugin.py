"""Registers the Land use view with Airflow: its FastAPI app at ``/landuse`` on the API
server, a "Land use" tab on every DAG run page and a "Land use" entry in the navigation.

The view itself is :mod:`landuse_airflow.views`; see docs/ui.md.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from landuse_airflow.views.view_app import create_app


class LanduseViewPlugin(AirflowPlugin):
    """The Land use view: change maps and reports next to the runs that made them."""

    name = "landuse_view"
    # Class attributes, as Airflow's plugin interface declares them.
    fastapi_apps = [  # noqa: RUF012
        {"app": create_app(), "url_prefix": "/landuse", "name": "Land use"}]
    external_views = [  # noqa: RUF012
        {"name": "Land use", "href": "/landuse/runs/{DAG_ID}/{RUN_ID}",
         "destination": "dag_run", "url_route": "landuse-run"},
        {"name": "Land use", "href": "/landuse/", "destination": "nav",
         "url_route": "landuse", "category": "browse"},
    ]
