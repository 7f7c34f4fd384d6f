"""Metadata-DB connection settings for the single-machine setup (SQLite).

The scheduler, DAG processor, API server and CLI all write the one SQLite file; SQLite
fails a writer that waits more than 5 s for the lock by default, which a busy scheduler
exceeds. Waiting longer turns "database is locked" errors into short pauses. Selected by
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS`` in ``scripts/env.sh``.
"""

CONNECT_ARGS: dict[str, object] = {"timeout": 60}
