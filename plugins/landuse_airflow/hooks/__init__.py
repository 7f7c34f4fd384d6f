"""Hooks: the Airflow-side handles operators use to reach the landuse library's resources."""
