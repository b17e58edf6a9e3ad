#!/usr/bin/env bash
# pgTAP tests under supabase/tests, run with pg_prove against the local database (services:up first).
# Each test file runs in a transaction and rolls back, so runs do not see each other.
set -euo pipefail
cd "$(dirname "$0")/.."
PGPORT=${CORTEX_PG_PORT:-54329}
pg_prove -h 127.0.0.1 -p "$PGPORT" -U postgres -d cortex --ext .sql -r supabase/tests
