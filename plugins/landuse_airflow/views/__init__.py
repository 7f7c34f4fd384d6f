"""The "Land use" view inside the Airflow UI: change reports, scoring and training runs.

:mod:`.view_data` finds and renders what the pages show (no Airflow imports),
:mod:`.view_app` is the FastAPI app the plugin (``plugins/landuse_view_plugin.py``) mounts,
with every endpoint behind Airflow's own authentication.
"""
