#!/usr/bin/env bash
# Print a stable description of a database's schema, to prove that a change to the migrations
# (a squash, a reorder) leaves the schema as it was: pg_dump --schema-only of the schemas the
# migrations touch, then catalog queries for what pg_dump leaves out or orders by OID: every
# function's definition, settings (proconfig), security, owner and ACL; roles and their
# memberships; database-level ACL; default privileges; vault rows by name (not value).
# Usage: scripts/schema-fingerprint.sh postgres://postgres@127.0.0.1:54329/db > a.txt
#        scripts/schema-fingerprint.sh --build [migrations-dir] > a.txt   (fresh scratch database)
# Compare two with `diff`; an empty diff means the same schema. Whole-line SQL comments (in pg_dump's
# output and in function bodies) are left out: they change no behaviour, and a squash rewords them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --build ]; then
  # A scratch database built from a migrations directory (default: supabase/migrations), dropped
  # afterwards.
  DIR=${2:-supabase/migrations}
  PGPORT=${CORTEX_PG_PORT:-54329}
  DB="cortex_fp_$(date +%s)_$$"
  BASE="postgres://postgres@127.0.0.1:$PGPORT"
  WORK=$(mktemp -d)
  cleanup() { dropdb -h 127.0.0.1 -p "$PGPORT" -U postgres --if-exists --force "$DB" 2>/dev/null || true; rm -rf "$WORK"; }
  trap cleanup EXIT
  # db-setup applies ./supabase/migrations: build a throw-away project tree around DIR.
  mkdir -p "$WORK/supabase/migrations" "$WORK/scripts"
  cp -r supabase/local supabase/config.toml "$WORK/supabase/"
  cp "$DIR"/*.sql "$WORK/supabase/migrations/"
  cp scripts/db-setup.sh "$WORK/scripts/"
  ln -s "$(pwd)/node_modules" "$WORK/node_modules"
  createdb -h 127.0.0.1 -p "$PGPORT" -U postgres "$DB"
  bash "$WORK/scripts/db-setup.sh" "$BASE/$DB" >/dev/null
  bash "$0" "$BASE/$DB"
  exit 0
fi
URL=${1:?usage: schema-fingerprint.sh DATABASE_URL | --build [dir]}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$URL" -c "$1"; }
echo '== pg_dump'
pg_dump --schema-only --no-comments -n public -n vault -n extensions -n auth "$URL" \
  | grep -v '^[[:space:]]*--' | grep -v '^\\\(un\)\?restrict '
echo '== functions'
q "select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') -> '
     || pg_get_function_result(p.oid) || ' | ' || pg_get_userbyid(p.proowner)
     || ' | definer=' || p.prosecdef || ' | ' || p.provolatile::text || ' | strict=' || p.proisstrict
     || ' | config=' || coalesce(array_to_string(p.proconfig, ','), '')
     || ' | acl=' || coalesce((select string_agg(a::text, ',' order by a::text) from unnest(p.proacl) a), '<default>')
     || ' | md5=' || md5(regexp_replace(p.prosrc, '^[ \t]*--[^\n]*(\n|$)', '', 'gn'))
   from pg_proc p join pg_namespace n on n.oid = p.pronamespace
   where n.nspname in ('public', 'vault', 'extensions', 'auth')
   order by 1"
echo '== roles'
q "select rolname || ' super=' || rolsuper || ' login=' || rolcanlogin || ' inherit=' || rolinherit
     || ' createrole=' || rolcreaterole || ' bypassrls=' || rolbypassrls || ' config=' || coalesce(array_to_string(rolconfig, ','), '')
   from pg_roles where rolname !~ '^pg_' order by 1"
echo '== memberships'
q "select r.rolname || ' in ' || g.rolname || ' admin=' || m.admin_option
   from pg_auth_members m join pg_roles r on r.oid = m.member join pg_roles g on g.oid = m.roleid
   where g.rolname !~ '^pg_' or r.rolname !~ '^pg_' order by 1"
echo '== database'
q "select coalesce((select string_agg(a::text, ',' order by a::text) from unnest(datacl) a), '<default>')
   from pg_database where datname = current_database()"
q "select coalesce(r.rolname, '*') || ': ' || array_to_string(s.setconfig, ',') from pg_db_role_setting s
   left join pg_roles r on r.oid = s.setrole where s.setdatabase = (select oid from pg_database where datname = current_database())
   order by 1"
echo '== default privileges'
q "select pg_get_userbyid(d.defaclrole) || ' ' || coalesce(n.nspname, '*') || ' ' || d.defaclobjtype::text || ' '
     || (select string_agg(a::text, ',' order by a::text) from unnest(d.defaclacl) a)
   from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace order by 1"
echo '== schema ACLs'
q "select nspname || ' ' || pg_get_userbyid(nspowner) || ' ' || coalesce((select string_agg(a::text, ',' order by a::text) from unnest(nspacl) a), '<default>')
   from pg_namespace where nspname !~ '^pg_' and nspname <> 'information_schema' order by 1"
echo '== vault rows (names only)'
q "select name || ' | ' || coalesce(description, '') from vault.secrets order by name"
echo '== row counts'
q "select string_agg(format('%s=%s', c.relname,
     (xpath('/row/n/text()', query_to_xml(format('select count(*) as n from public.%I', c.relname), false, true, '')))[1]::text), ' ' order by c.relname)
   from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r'"
