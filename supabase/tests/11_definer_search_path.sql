-- The temp-domain attack (security review, item 1): a caller with TEMP creates a domain named like a
-- built-in type in pg_temp, with a CHECK that calls its own temporary function. A function whose
-- search_path leaves pg_temp implicit ('' included) searches pg_temp FIRST for types, so the
-- domain replaces `uuid`/`text`/... in the function's declarations and casts, and the temporary
-- function runs as the function's owner (a superuser locally): it could read the vault root key or
-- delete audit rows with every trigger on. Pinned `search_path = pg_catalog, pg_temp` finds the
-- built-in type first. This file must start a fresh session's first use of the functions (PL/pgSQL
-- caches resolved types per session), so it calls nothing before the attack.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(8);

-- ---- the role cannot even try ---------------------------------------------------------------------
select ok(not has_database_privilege('cortex_orchestrator', current_database(), 'TEMPORARY'),
  'cortex_orchestrator holds no TEMPORARY on the database');
select ok(not has_database_privilege('public', current_database(), 'TEMPORARY'),
  'PUBLIC holds no TEMPORARY on the database');
create function pg_temp.try(p_sql text) returns text language plpgsql as $f$
begin
  execute p_sql;
  return 'ok';
exception when others then
  return sqlstate;
end
$f$;
set local role cortex_orchestrator;
do $d$
begin
  perform set_config('t.table', pg_temp.try($$create temp table t (x int)$$), true);
  perform set_config('t.function', pg_temp.try($$create function pg_temp.f() returns int language sql as 'select 1'$$), true);
end
$d$;
reset role;
select is(current_setting('t.table'), '42501', 'cortex_orchestrator cannot create a temp table');
select is(current_setting('t.function'), '42501', 'cortex_orchestrator cannot create a temp function');

-- ---- with TEMP (as service_role has on a hosted project), the attack finds nothing to hijack --------
-- TEMP granted here, inside this rolled-back transaction, to show the pinned search_path holds
-- even for a caller that has it.
do $$ begin execute format('grant temporary on database %I to cortex_orchestrator', current_database()); end $$;
set local role cortex_orchestrator;
create function pg_temp.pwn() returns boolean language plpgsql as $f$
begin
  -- records who ran it; as the functions' owner it could do anything
  perform set_config('pwn.ran_as', coalesce(current_setting('pwn.ran_as', true), '') || current_user || ' ', false);
  return true;
end
$f$;
create domain pg_temp.uuid as pg_catalog.uuid check (pg_temp.pwn());
create domain pg_temp.text as pg_catalog.text check (pg_temp.pwn());
create domain pg_temp.jsonb as pg_catalog.jsonb check (pg_temp.pwn());
create domain pg_temp.bytea as pg_catalog.bytea check (pg_temp.pwn());
create domain pg_temp.int4 as pg_catalog.int4 check (pg_temp.pwn());
create domain pg_temp.int8 as pg_catalog.int8 check (pg_temp.pwn());
create domain pg_temp.integer as pg_catalog.int4 check (pg_temp.pwn());
create domain pg_temp.bigint as pg_catalog.int8 check (pg_temp.pwn());
create domain pg_temp.timestamptz as pg_catalog.timestamptz check (pg_temp.pwn());
do $$ begin perform set_config('pwn.ran_as', '', false); end $$;
do $d$
begin
  perform pg_temp.try($$select public.organizations__create('attack')$$);
  perform pg_temp.try($$select public.deployment_secrets__read(gen_random_uuid(), array[gen_random_uuid()])$$);
  perform pg_temp.try($$select public.platform_secrets__read('attack')$$);
  perform pg_temp.try($$select public.secrets__create(gen_random_uuid(), 'x', 'other', 'sk-attack-0123456789abcdef', repeat('ab', 32))$$);
  perform pg_temp.try($$select public.secret_access_log__verify()$$);
end
$d$;
reset role;
select is(current_setting('pwn.ran_as'), '', 'no temporary domain or function ran inside a contract function');

-- ---- the rule, for every function in public and in the vault stand-in ------------------------------
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.prosecdef and p.pronamespace in ('public'::regnamespace, 'vault'::regnamespace)
     and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)),
  null, 'every security definer function in public and vault pins search_path = pg_catalog, pg_temp');
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace
     and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)),
  null, 'every function in public, definer or not, pins search_path = pg_catalog, pg_temp');
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.prosecdef and p.pronamespace not in ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
     and p.pronamespace not in (select oid from pg_namespace where nspname like 'pg\_%')
     and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)
     and has_function_privilege('cortex_orchestrator', p.oid, 'execute')),
  null, 'cortex_orchestrator can execute no security definer function that leaves its search_path open');

select * from finish();
rollback;
