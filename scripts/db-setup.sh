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
# A database built before the squash of issue 8 lists migration versions that no longer exist
# (their content moved, unchanged, into the files of the same concern; scripts/schema-fingerprint.sh
# showed the schema identical). The CLI refuses such a history. When all nine old versions are
# recorded (the database is at the squashed schema), forget the four that went; otherwise say what
# to do rather than let the CLI suggest a repair that would be wrong here.
SQUASHED_AWAY="20261125221300 20261125221500 20261125222412 20261130100000"
PRE_SQUASH="20261125211500 20261125211600 20261125211700 20261125221400 $SQUASHED_AWAY 20261130120000"
applied=$(psql -X -q -At -d "$URL" -c "select version from supabase_migrations.schema_migrations" 2>/dev/null || true)
stale=""
for v in $applied; do
  compgen -G "supabase/migrations/${v}_*.sql" >/dev/null || stale="$stale $v"
done
if [ -n "$stale" ]; then
  all_old=yes
  for v in $PRE_SQUASH; do grep -qx "$v" <<<"$applied" || all_old=no; done
  only_squashed=yes
  for v in $stale; do case " $SQUASHED_AWAY " in *" $v "*) ;; *) only_squashed=no ;; esac; done
  if [ "$all_old" = yes ] && [ "$only_squashed" = yes ]; then
    echo "db-setup: the migration history lists versions squashed away in issue 8 ($stale ); forgetting them (the schema they built is the squashed one)" >&2
    psql -X -q -v ON_ERROR_STOP=1 -d "$URL" -c "delete from supabase_migrations.schema_migrations where version in ($(sed 's/\([0-9]\+\)/'"'"'\1'"'"'/g; s/ /, /g' <<<"${stale# }"))"
  else
    db=${URL##*/}; db=${db%%\?*}
    cat >&2 <<MSG
db-setup: database $db lists migrations that are not in supabase/migrations:$stale
  Migrations were squashed (issue 8) and a database built from the old files cannot be brought
  forward in place. Recreate it (this deletes its data, e.g. local deployments' rows):
    dropdb --maintenance-db='${URL%/*}/postgres' --force $db && npm run services:up
MSG
    exit 1
  fi
fi
# A database whose secrets migration predates the fingerprint move (issue 7: the HMAC key left the
# vault for FINGERPRINT_KEY_FILE; secrets__create / __add_version and platform_secrets__create /
# __rotate take p_fingerprint) is brought forward in place, so a shared development database keeps
# its rows: the old functions and the vault key go, and the current definitions of the changed
# functions (with their grants) are taken from the migration files themselves, not copied here.
if [ "$(psql -X -q -At -d "$URL" -c "select to_regprocedure('public.secrets__fingerprint_key()') is not null" 2>/dev/null)" = t ]; then
  echo "db-setup: moving the fingerprint key out of the database (issue 7) on an existing database" >&2
  CHANGED='secrets__describe_value|secrets__create|secrets__add_version|platform_secrets__describe_value|platform_secrets__create|platform_secrets__rotate'
  {
    echo 'begin;'
    echo 'drop function public.secrets__create(uuid, text, text, text, uuid, text, text, inet, text);'
    echo 'drop function public.secrets__add_version(uuid, text, text, text, inet, text);'
    echo 'drop function public.platform_secrets__create(text, text, text, text, inet, text);'
    echo 'drop function public.platform_secrets__rotate(text, text, text, text, inet, text);'
    echo 'drop function public.platform_secrets__describe_value(text);'
    echo 'drop function public.secrets__describe_value(text);'
    echo 'drop function public.secrets__fingerprint(text);'
    echo 'drop function public.secrets__fingerprint_key();'
    echo "delete from vault.secrets where name = 'cortex:fingerprint-key:v1';"
    for f in supabase/migrations/20261125211700_secrets.sql supabase/migrations/20261125221400_platform_secrets.sql; do
      awk -v re="^create function public[.]($CHANGED)[(]" '
        $0 ~ re { on = 1 }
        on { print }
        on && /^\$\$;$/ { on = 0 }' "$f"
      awk -v re="^(revoke|grant) .* on function public[.]($CHANGED)[(]" '
        $0 ~ re { on = 1 }
        on { print }
        on && /;$/ { on = 0 }' "$f"
    done
    echo 'commit;'
  } | psql -X -q -v ON_ERROR_STOP=1 -d "$URL" >/dev/null
fi
# Likewise the pipeline's shared guard of record_host / record_dns (deployments__lock_provisioning,
# added in the squash): same behaviour before and after, brought in so the schema is the same.
if [ "$(psql -X -q -At -d "$URL" -c "select to_regprocedure('public.deployments__record_dns(uuid, text, text)') is not null
      and to_regprocedure('public.deployments__lock_provisioning(uuid, text)') is null" 2>/dev/null)" = t ]; then
  echo "db-setup: adding deployments__lock_provisioning (the squash) on an existing database" >&2
  CHANGED='deployments__lock_provisioning|deployments__record_host|deployments__record_dns'
  {
    echo 'begin;'
    awk -v re="^create function public[.]($CHANGED)[(]" '
      $0 ~ re { on = 1; sub(/^create function/, "create or replace function") }
      on { print }
      on && /^\$\$;$/ { on = 0 }' supabase/migrations/20261130120000_pipeline.sql
    grep -E '^revoke all on function public[.]deployments__lock_provisioning[(]' supabase/migrations/20261130120000_pipeline.sql
    echo 'commit;'
  } | psql -X -q -v ON_ERROR_STOP=1 -d "$URL" >/dev/null
fi
sep='?'; case "$URL" in *\?*) sep='&' ;; esac
npx --no-install supabase migration up --db-url "${URL}${sep}sslmode=disable" 2>&1 | grep -v '^$' || { echo "migration up failed" >&2; exit 1; }
