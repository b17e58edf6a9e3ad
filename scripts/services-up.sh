#!/usr/bin/env bash
# Make this machine ready for the project: Debian packages, a private PostgreSQL and Redis on
# 127.0.0.1 at non-standard ports with their data under .local/, the database with Supabase's
# local stand-ins and the project's migrations. Idempotent: a second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=${CORTEX_STATE_DIR:-$ROOT/.local}
case "$STATE" in /*) ;; *) STATE=$ROOT/$STATE ;; esac
# Paths end up in the server's option string and in overlayfs mount options: keep them plain.
case "$STATE" in *[[:space:],:\'\"]*) echo "[services] the state directory ($STATE) must not contain spaces, quotes, ',' or ':'; set CORTEX_STATE_DIR" >&2; exit 1 ;; esac
PGPORT=${CORTEX_PG_PORT:-54329}
REDIS_PORT=${CORTEX_REDIS_PORT:-63799}
PGBIN=/usr/lib/postgresql/15/bin
DB=cortex

log() { printf '[services] %s\n' "$*" >&2; }

bash scripts/deps.sh

mkdir -p "$STATE"
chmod 0711 "$STATE"

# ---- PostgreSQL -------------------------------------------------------------------------------
# The server runs as the postgres OS user, which must be able to reach its data directory. When
# the checkout sits below a directory it cannot traverse (e.g. /root), keep the cluster in a
# per-checkout directory under /var/tmp and link it from .local/pg.
if [ ! -e "$STATE/pg" ] && ! runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
  alt=/var/tmp/cortex-pg-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
  # A cluster an earlier checkout at this same path left behind (its .local is gone, so this is a
  # fresh one): start clean rather than reuse a schema built from older migrations. A cluster that
  # still runs is left alone (and reused, as before).
  if [ -e "$alt/data/PG_VERSION" ]; then
    pidfile="$alt/data/postmaster.pid"
    if [ -s "$pidfile" ] && kill -0 "$(head -n 1 "$pidfile")" 2>/dev/null; then
      log "a PostgreSQL an earlier checkout at $ROOT started still runs from $alt: reusing it"
    else
      log "removing the cluster an earlier checkout at $ROOT left in $alt"
      rm -rf "$alt"
    fi
  fi
  log "postgres cannot reach $STATE; keeping the cluster in $alt (linked from $STATE/pg)"
  mkdir -p "$alt"; chown postgres:postgres "$alt"; chmod 0700 "$alt"
  ln -s "$alt" "$STATE/pg"
fi
mkdir -p "$STATE/pg/"
PGHOME=$(readlink -f "$STATE/pg") # the postgres user reaches its files by the resolved path
PGDATA=$PGHOME/data
PGSOCK=$PGHOME/sock
VAULT_KEY=$PGHOME/vault_root.key
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  log "initialising PostgreSQL cluster in $PGDATA"
  mkdir -p "$PGDATA" "$PGSOCK"
  chown -R postgres:postgres "$PGHOME"
  chmod 0700 "$PGDATA"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=trust \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
fi
# The vault stand-in's root key lives outside the database, readable only by the postgres OS user,
# like the root key Supabase hands to supabase_vault at server start.
if [ ! -s "$VAULT_KEY" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$VAULT_KEY")
  chown postgres:postgres "$VAULT_KEY"; chmod 0400 "$VAULT_KEY"
fi
chown postgres:postgres "$PGHOME" "$PGSOCK" 2>/dev/null || true
if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  log "starting PostgreSQL on 127.0.0.1:$PGPORT"
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGHOME/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGSOCK -c max_connections=200 \
        -c shared_preload_libraries=plpgsql_check -c cortex.vault_root_key_file=$VAULT_KEY" >/dev/null
fi
psql_su() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres "$@"; }
if [ "$(psql_su -d postgres -Atc "select 1 from pg_database where datname='$DB'")" != 1 ]; then
  psql_su -d postgres -c "create database $DB"
fi

# ---- Redis ------------------------------------------------------------------------------------
RDIR=$STATE/redis
mkdir -p "$RDIR"
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes --daemonize yes \
    --dir "$RDIR" --pidfile "$RDIR/redis.pid" --logfile "$RDIR/redis.log" \
    --save '' --appendonly yes --maxmemory-policy noeviction >/dev/null
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# ---- DNS: local authoritative server for the agents' zone (Knot; scripts/dns-up.sh) -----------
bash scripts/dns-up.sh

# ---- Database schema --------------------------------------------------------------------------
DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/$DB"
bash scripts/db-setup.sh "$DATABASE_URL" >&2

# ---- Local host image (debootstrap; rebuilt only when its recipe changes) -------------------------
npx --no-install tsx scripts/image-build.ts >&2

cat <<INFO
PostgreSQL  $DATABASE_URL?sslmode=disable   (data: $PGDATA)
Redis       redis://127.0.0.1:$REDIS_PORT    (data: $RDIR)
INFO
