"""Land-use maps and change reports from NAIP aerial imagery, county by county.

The library behind the project's Airflow DAGs: importable without Airflow, each stage
callable from a notebook or the ``landuse`` command.
"""

__version__ = "0.1.0"
