"""Triggers: waits that run in Airflow's triggerer (cluster resizes)."""
