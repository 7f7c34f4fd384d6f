#!/usr/bin/env bash
# The Docker Compose deployment (docker-compose.yaml) on this machine, offline where it must be.
#
#   scripts/stack.sh up        engine, images, .env; docker-compose up with two Spark workers;
#                              waits until every service is healthy
#   scripts/stack.sh images    only build the images
#   scripts/stack.sh down [-v] stop the stack (-v: and remove its volumes)
#
# The engine: Debian's docker.io and docker-compose (1.29; Compose v2 is used where present),
# installed when missing (as root), dockerd started when it is not running.
# The images: the project image (Dockerfile) is always built offline: its Python packages
# come from a wheelhouse that this script prepares from requirements.lock (docker/wheelhouse/,
# with Leaflet's npm package), served to the build on 127.0.0.1 only. Its bases, and the
# Postgres, Redis and Azurite images, are the official ones when they are here or can be
# pulled; otherwise (LANDUSE_STANDINS=1, or auto when Docker Hub is out of reach) local
# STAND-INS built from Debian's packages (docker/standins/), tagged landuse-standin/* and
# named as such in .env: they are not the official images.
set -euo pipefail
cd "$(dirname "$0")/.."

AIRFLOW_OFFICIAL=apache/airflow:3.3.2-python3.11
NODE_OFFICIAL=node:20-slim
POSTGRES_OFFICIAL=postgres:16
REDIS_OFFICIAL=redis:7.4
AZURITE_OFFICIAL=mcr.microsoft.com/azure-storage/azurite:3.35.0
LEAFLET_VERSION=1.9.4
STANDIN=landuse-standin
DEBIAN_STANDIN="$STANDIN/debian:bookworm"
WHEELHOUSE=docker/wheelhouse
log() { echo "stack: $*"; }

engine() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      log "missing ${missing[*]}: install them (apt-get install ${missing[*]}, as root)" >&2
      exit 1
    fi
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start" >&2; tail -20 /var/log/dockerd.log >&2; exit 1; }
  fi
}

compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Official bases when here or pullable; otherwise stand-ins (auto), or as LANDUSE_STANDINS says.
use_standins() {
  case "${LANDUSE_STANDINS:-auto}" in
    1 | yes) return 0 ;;
    0 | no) return 1 ;;
  esac
  have_image "$AIRFLOW_OFFICIAL" && return 1
  log "pulling $AIRFLOW_OFFICIAL (stand-ins are built if Docker Hub cannot be reached)"
  if timeout 300 docker pull -q "$AIRFLOW_OFFICIAL" >/dev/null 2>&1; then
    for image in "$NODE_OFFICIAL" "$POSTGRES_OFFICIAL" "$REDIS_OFFICIAL" "$AZURITE_OFFICIAL"; do
      docker pull -q "$image" >/dev/null
    done
    return 1
  fi
  return 0
}

debian_standin() {
  have_image "$DEBIAN_STANDIN" && return
  local root
  root="$(mktemp -d /tmp/landuse-debian-XXXXXX)"
  log "debootstrap bookworm into $root (the stand-ins' Debian base)"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  # Slim, as the official Debian images are: no documentation, no package lists.
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\n' \
    > "$root/etc/dpkg/dpkg.cfg.d/excludes"
  mkdir -p "$root/usr/share/man/man1"  # Java's package links its manual page there
  tar -C "$root" -c . | docker import --change 'CMD ["bash"]' \
    --change 'LABEL org.opencontainers.image.description="landuse stand-in: Debian bookworm by debootstrap"' \
    - "$DEBIAN_STANDIN" >/dev/null
  rm -rf "$root"
}

build_standin() {  # name tag [context]
  local context="${3:-docker/standins/$1}"
  log "building stand-in $2"
  docker build -q --network host --build-arg DEBIAN_IMAGE="$DEBIAN_STANDIN" -t "$2" \
    -f "docker/standins/$1/Dockerfile" "$context" >/dev/null
}

standins() {
  debian_standin
  build_standin airflow "$STANDIN/airflow:3.3.2-python3.11"
  build_standin node "$STANDIN/node:20"
  build_standin postgres "$STANDIN/postgres:16"
  build_standin redis "$STANDIN/redis:7.4"
  # Azurite's npm package as scripts/setup.sh installs it (no registry inside a build).
  local context
  context="$(mktemp -d /tmp/landuse-azurite-XXXXXX)"
  cp -r .tools/node_modules "$context/node_modules"
  build_standin azurite "$STANDIN/azurite:3.35.0" "$context"
  rm -rf "$context"
}

wheelhouse() {
  local want
  want="$(cat requirements.lock | sha256sum | cut -c1-64)"
  [ "$(cat "$WHEELHOUSE/.lock-sha256" 2>/dev/null)" = "$want" ] && return
  log "wheelhouse from requirements.lock in $WHEELHOUSE/"
  mkdir -p "$WHEELHOUSE"
  # Wheels as published, built here for the few packages published as source only (pyspark);
  # setuptools builds the project; async-timeout is what redis needs on Python < 3.11.3
  # (Debian's 3.11.2, in the Airflow stand-in).
  .venv/bin/python -m pip wheel --quiet --no-deps -w "$WHEELHOUSE" \
    -r requirements.lock "setuptools>=68" wheel "async-timeout>=4.0.3"
  npm pack --silent --pack-destination "$WHEELHOUSE" "leaflet@$LEAFLET_VERSION" >/dev/null
  echo "$want" > "$WHEELHOUSE/.lock-sha256"
}

images() {
  engine
  scripts/setup.sh  # the venv (its pip prepares the wheelhouse) and Azurite's npm package
  local airflow_base="$AIRFLOW_OFFICIAL" node_base="$NODE_OFFICIAL"
  if use_standins; then
    log "Docker Hub is out of reach: building local STAND-INS for the official images"
    standins
    airflow_base="$STANDIN/airflow:3.3.2-python3.11"
    node_base="$STANDIN/node:20"
  fi
  wheelhouse
  # A fixed port: the URL is a build argument, and a new one would rebuild every layer after it.
  local port="${LANDUSE_WHEELHOUSE_PORT:-8765}"
  python3 -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$port" >/dev/null 2>&1 &
  local server=$!
  trap "kill $server 2>/dev/null || true" EXIT  # also when a failed build ends the script
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/.lock-sha256" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$port/.lock-sha256" >/dev/null || {
    log "cannot serve the wheelhouse on 127.0.0.1:$port (set LANDUSE_WHEELHOUSE_PORT)" >&2; exit 1; }
  log "building landuse-airflow:latest on $airflow_base (packages from the wheelhouse only)"
  docker build -q --network host -t landuse-airflow:latest \
    --build-arg AIRFLOW_IMAGE="$airflow_base" --build-arg NODE_IMAGE="$node_base" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS="http://127.0.0.1:$port/" \
    --build-arg LEAFLET="http://127.0.0.1:$port/leaflet-$LEAFLET_VERSION.tgz" . >/dev/null
}

# .env: generated secrets on the first start (kept after), the images this machine has.
dot_env() {
  if [ ! -f .env ]; then
    log "writing .env with generated secrets (keep it private; never commit it)"
    .venv/bin/python - <<'PY'
import re
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

values = {"POSTGRES_PASSWORD": secrets.token_urlsafe(24),
          "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
          "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(32),
          "AIRFLOW_API_SECRET_KEY": secrets.token_urlsafe(32),
          "REDIS_PASSWORD": secrets.token_urlsafe(24)}
text = Path(".env.example").read_text()
for name, value in values.items():
    text = re.sub(rf"^{name}=$", f"{name}={value}", text, flags=re.MULTILINE)
Path(".env").write_text(text)
Path(".env").chmod(0o600)
PY
  fi
  local name value
  for name in POSTGRES_IMAGE REDIS_IMAGE AZURITE_IMAGE; do
    case "$name" in
      POSTGRES_IMAGE) value="$POSTGRES_OFFICIAL" ;;
      REDIS_IMAGE) value="$REDIS_OFFICIAL" ;;
      AZURITE_IMAGE) value="$AZURITE_OFFICIAL" ;;
    esac
    have_image "$value" || value="$STANDIN/${value##*/}"
    sed -i "/^$name=/d" .env
    echo "$name=$value" >> .env
  done
}

# Every container of the stack: healthy where it has a health check, running otherwise,
# exited 0 for the one-off init containers.
wait_healthy() {
  local deadline=$((SECONDS + ${1:-900})) pending
  while :; do
    pending=""
    for id in $(compose ps -q); do
      read -r name state health code < <(docker inspect -f \
        '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$id")
      case "$state/$health/$code" in
        running/healthy/* | running/none/* | exited/none/0) ;;
        exited/*) log "${name#/} exited with code $code" >&2; compose logs --tail 40 "$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")" >&2; exit 1 ;;
        *) pending+=" ${name#/}($state/$health)" ;;
      esac
    done
    [ -z "$pending" ] && { log "every service is up"; compose ps; return; }
    if [ "$SECONDS" -gt "$deadline" ]; then log "not healthy in time:$pending" >&2; exit 1; fi
    sleep 5
  done
}

case "${1:-up}" in
  images) images ;;
  up)
    images
    dot_env
    log "docker-compose up with two Spark workers"
    compose up -d --no-build --scale spark-worker=2
    wait_healthy
    ;;
  down) shift; engine; compose down "$@" ;;
  *) echo "usage: scripts/stack.sh [up | images | down [-v]]" >&2; exit 2 ;;
esac
