#!/usr/bin/env bash
# `npm run test:db`: `supabase db lint` (fails on any warning) and the pgTAP tests under
# supabase/tests with pg_prove, against the local database (`npm run services:up` first). Each
# pgTAP file runs in a transaction and rolls back, so runs do not see each other.
set -euo pipefail
cd "$(dirname "$0")/.."
PGPORT=${CORTEX_PG_PORT:-54329}
npx --no-install supabase db lint --db-url "postgres://postgres@127.0.0.1:$PGPORT/cortex?sslmode=disable" \
  --level warning --fail-on warning
pg_prove -h 127.0.0.1 -p "$PGPORT" -U postgres -d cortex --ext .sql -r supabase/tests
