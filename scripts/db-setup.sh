#!/usr/bin/env bash
# Bring a database to the project's schema: Supabase's stand-ins for plain Postgres (local only,
# never a migration), then the migrations with the pinned Supabase CLI. Idempotent.
# Usage: scripts/db-setup.sh postgres://postgres@127.0.0.1:54329/cortex
set -euo pipefail
cd "$(dirname "$0")/.."
URL=${1:?usage: db-setup.sh DATABASE_URL}
for f in supabase/local/*.sql; do
  [ -e "$f" ] || continue
  psql -X -q -v ON_ERROR_STOP=1 -d "$URL" -f "$f" >/dev/null
done
sep='?'; case "$URL" in *\?*) sep='&' ;; esac
npx --no-install supabase migration up --db-url "${URL}${sep}sslmode=disable" 2>&1 | grep -v '^$' || { echo "migration up failed" >&2; exit 1; }
