#!/usr/bin/env bash
# Stop exactly what services-up started (by its data directories and pid files); keep the data.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=${CORTEX_STATE_DIR:-$ROOT/.local}
case "$STATE" in /*) ;; *) STATE=$ROOT/$STATE ;; esac
PGBIN=/usr/lib/postgresql/15/bin
PGDATA=$(readlink -f "$STATE/pg" 2>/dev/null)/data
if [ -s "$PGDATA/postmaster.pid" ]; then
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null && echo "[services] PostgreSQL stopped"
fi
if [ -s "$STATE/redis/redis.pid" ]; then
  pid=$(cat "$STATE/redis/redis.pid")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "[services] Redis stopped"
  fi
fi
# Knot DNS (scripts/dns-up.sh): through its control socket, then wait for its pid to go.
if [ -S "$STATE/dns/knot.sock" ]; then
  pid=$(cat "$STATE/dns/knot.pid" 2>/dev/null)
  if knotc -s "$STATE/dns/knot.sock" -t 5 stop >/dev/null 2>&1; then
    for _ in $(seq 1 50); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "[services] Knot DNS stopped"
  fi
fi
exit 0
