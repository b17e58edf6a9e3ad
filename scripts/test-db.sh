#!/usr/bin/env bash
# `npm run test:db`: squawk on the migrations (.squawk.toml: which rules do not apply, and why),
# `supabase db lint` (fails on any warning) and the pgTAP tests under
# supabase/tests with pg_prove, against a database created for this run (createdb, then the same
# set-up as services:up: scripts/db-setup.sh) and dropped afterwards, so nothing else writing to the
# shared `cortex` database can disturb a count, and every run starts from the migrations as they
# are. The local Postgres must be up (`npm run services:up`). Each pgTAP file also runs in a
# transaction and rolls back, so the files do not see each other.
set -euo pipefail
cd "$(dirname "$0")/.."
PGPORT=${CORTEX_PG_PORT:-54329}
DB="cortex_test_$(date +%s)_$$"
BASE="postgres://postgres@127.0.0.1:$PGPORT"
cleanup() { dropdb -h 127.0.0.1 -p "$PGPORT" -U postgres --if-exists --force "$DB" 2>/dev/null || true; }
trap cleanup EXIT
if ! node_modules/.bin/squawk -c .squawk.toml supabase/migrations/*.sql; then
  cat >&2 <<'HINT'
test:db: squawk refused a migration (above). Most often: start the file with
    set local lock_timeout = '5s';
    set local statement_timeout = '60s';
(the CLI runs each file in one transaction). An index on an existing table: a migration of its own,
    -- squawk-disable-assume-in-transaction
    set lock_timeout = 0;             -- the build waits for older transactions; no 55P03 (review R16 F7)
    set statement_timeout = '30min';
    create index concurrently … ;     -- one per file, no `if not exists` (see 20261206090000)
A constraint on an existing table: add it NOT VALID, validate it in the next migration. Where a
rule cannot apply, say why in a `-- squawk-ignore <rule>` comment above the statement.
HINT
  exit 1
fi
createdb -h 127.0.0.1 -p "$PGPORT" -U postgres "$DB"
bash scripts/db-setup.sh "$BASE/$DB" >/dev/null
npx --no-install supabase db lint --db-url "$BASE/$DB?sslmode=disable" --level warning --fail-on warning
pg_prove -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$DB" --ext .sql -r supabase/tests
