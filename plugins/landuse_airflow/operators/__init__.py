"""Operators: Airflow tasks around the landuse library (inference, Spark scoring, clusters)."""
