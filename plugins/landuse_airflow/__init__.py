"""Airflow glue for the landuse library: shared Params, Assets and (later) operators and hooks.

Kept apart from ``include/landuse`` so the library never imports Airflow.
"""
