#!/usr/bin/env bash
# The stand-in's entrypoint, as the official image documents its own: `bash` and `python`
# commands run as given; anything else is passed to `airflow` (which may be named), after the
# metadata database answers (CONNECTION_CHECK_MAX_COUNT tries, CONNECTION_CHECK_SLEEP_TIME s
# apart; 0 tries skips the check).
set -euo pipefail
[[ $# -eq 0 ]] && exec bash
case "$1" in
  bash | sh | python | python3) exec "$@" ;;
  airflow) shift ;;
esac
tries="${CONNECTION_CHECK_MAX_COUNT:-20}"
for ((i = 1; i <= tries; i++)); do
  airflow db check >/dev/null 2>&1 && break
  if ((i == tries)); then
    echo "entrypoint: the metadata database did not answer after $tries tries" >&2
    exit 1
  fi
  sleep "${CONNECTION_CHECK_SLEEP_TIME:-3}"
done
exec airflow "$@"
