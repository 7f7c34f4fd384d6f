# The project's image: the official Airflow image (the Airflow version pinned in
# requirements.txt) plus the pinned requirements.lock and the landuse library.
# docker-compose.yaml runs every service of the stack from it: the Airflow components, the
# Spark master and workers (the Spark that the pip pyspark package ships: spark-class and
# spark-submit are on PATH), and the MLflow tracking server, so Spark executors have the
# same Python and packages as the drivers in Airflow tasks.
#
# Where no registry is reachable, scripts/stack.sh builds it offline: the bases are local
# stand-ins (AIRFLOW_IMAGE, NODE_IMAGE), Python packages come from a wheelhouse prepared from
# requirements.lock outside the build (PIP_NO_INDEX, PIP_FIND_LINKS: pip reads them from the
# build's environment) and Leaflet from a package file (LEAFLET). The defaults are the
# official images and the registries.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG NODE_IMAGE=node:20-slim

# The Land use view's map library, from npm (pinned as in scripts/setup.sh; BSD-2 licence
# kept beside it).
FROM ${NODE_IMAGE} AS leaflet
ARG LEAFLET=leaflet@1.9.4
RUN npm install --no-audit --no-fund --prefix /leaflet "${LEAFLET}" \
    && cp /leaflet/node_modules/leaflet/LICENSE /leaflet/node_modules/leaflet/dist/

FROM ${AIRFLOW_IMAGE}
ARG PIP_NO_INDEX=
ARG PIP_FIND_LINKS=

USER root
# Java for Spark (drivers in tasks, the master, the workers); Debian's default JRE (17 or 21),
# both supported by Spark 4.
RUN apt-get update \
    && apt-get install -y --no-install-recommends default-jre-headless \
    && rm -rf /var/lib/apt/lists/*
# The library's folder (an editable install writes there) and the MLflow artifact store's
# mount point, owned by airflow: an empty named volume takes the owner of the image's folder.
RUN mkdir -p /opt/landuse /opt/mlflow/artifacts \
    && chown -R airflow:root /opt/landuse /opt/mlflow \
    && chmod -R g+rwX /opt/mlflow
USER airflow
# The mount point of the outputs volume, writable by the airflow user (and its group).
RUN mkdir -p /opt/airflow/output && chmod g+rwX /opt/airflow/output

COPY --chown=airflow:root requirements.lock /opt/landuse/requirements.lock
# The Airflow pin repeated so that nothing in the lock can move Airflow off the base image's
# version (the lock pins the same one).
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
    -r /opt/landuse/requirements.lock
COPY --chown=airflow:root pyproject.toml /opt/landuse/pyproject.toml
COPY --chown=airflow:root include /opt/landuse/include
# Editable, so that docker-compose.yaml's bind mount of ./include is the code that runs.
RUN pip install --no-cache-dir --no-deps -e /opt/landuse
COPY --from=leaflet --chown=airflow:root /leaflet/node_modules/leaflet/dist /opt/landuse/leaflet
ENV LANDUSE_LEAFLET_DIR=/opt/landuse/leaflet
