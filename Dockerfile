# The project's Airflow image: the official Airflow image plus the pinned requirements and
# the landuse library. Used by docker-compose.yaml.
FROM apache/airflow:3.3.2-python3.11

USER root
# Java for Spark (scoring stages run pyspark inside tasks and drivers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
USER airflow

COPY --chown=airflow:root requirements.lock /opt/landuse/requirements.lock
RUN pip install --no-cache-dir -r /opt/landuse/requirements.lock
COPY --chown=airflow:root pyproject.toml /opt/landuse/pyproject.toml
COPY --chown=airflow:root include /opt/landuse/include
RUN pip install --no-cache-dir --no-deps -e /opt/landuse
