-- Who may call what and touch which table (DESIGN invariants 6-7): every contract function is a
-- security definer with an empty search_path, callable by service_role and by nobody else; internal
-- helpers by nobody; RLS on every table; anon gets nothing, authenticated reads, service_role
-- writes (the audit log excepted).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
-- pgTAP lives in `extensions`; the orchestrator's role needs it only to run the assertions here
grant usage on schema extensions to cortex_orchestrator;
select plan(219);

create temp table contract (fn regprocedure primary key, call text not null);
insert into contract values
  ('public.organizations__create(text)', $$select public.organizations__create('x')$$),
  ('public.organization_members__add(uuid, uuid, text)',
   $$select public.organization_members__add(gen_random_uuid(), gen_random_uuid())$$),
  ('public.deployments__create(uuid, text, text, text, text, text)',
   $$select public.deployments__create(gen_random_uuid(), 'x', 'x')$$),
  ('public.deployments__get(uuid)', $$select public.deployments__get(gen_random_uuid())$$),
  ('public.deployments__set_status(uuid, text)', $$select public.deployments__set_status(gen_random_uuid(), 'ready')$$),
  ('public.secrets__create(uuid, text, text, text, text, uuid, text, text, inet, text)',
   $$select public.secrets__create(gen_random_uuid(), 'x', 'other', 'x', repeat('ab', 32))$$),
  ('public.secrets__add_version(uuid, text, text, text, text, inet, text)',
   $$select public.secrets__add_version(gen_random_uuid(), 'x', repeat('ab', 32))$$),
  ('public.secret_versions__retire(uuid, integer, text, text, inet, text)',
   $$select public.secret_versions__retire(gen_random_uuid(), 1)$$),
  ('public.secrets__revoke(uuid, uuid, text, text, inet, text)',
   $$select public.secrets__revoke(gen_random_uuid(), gen_random_uuid())$$),
  ('public.deployment_secrets__bind(uuid, text, uuid, text, text, inet, text)',
   $$select public.deployment_secrets__bind(gen_random_uuid(), 'X', gen_random_uuid())$$),
  ('public.deployment_secrets__unbind(uuid, text, text, text, inet, text)',
   $$select public.deployment_secrets__unbind(gen_random_uuid(), 'X')$$),
  ('public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid)',
   $$select public.deployment_secrets__read(gen_random_uuid())$$),
  ('public.deployment_secrets__intend_read(uuid, uuid[], text, text, inet, text)',
   $$select public.deployment_secrets__intend_read(gen_random_uuid())$$),
  ('public.platform_secrets__intend_read(text, text, text, inet, text)',
   $$select public.platform_secrets__intend_read('x')$$),
  ('public.secrets__delete_for_deployment(uuid, text, text, inet, text)',
   $$select public.secrets__delete_for_deployment(gen_random_uuid())$$),
  ('public.secret_access_log__verify(uuid)', $$select public.secret_access_log__verify()$$),
  ('public.secret_access_log__apply_retention(timestamp with time zone)',
   $$select public.secret_access_log__apply_retention(now() - interval '1000 years')$$),
  ('public.platform_secrets__create(text, text, text, text, text, inet, text)',
   $$select public.platform_secrets__create('x', 'x', repeat('ab', 32))$$),
  ('public.platform_secrets__rotate(text, text, text, text, text, inet, text)',
   $$select public.platform_secrets__rotate('x', 'x', repeat('ab', 32))$$),
  ('public.platform_secrets__read(text, text, text, inet, text, uuid)', $$select public.platform_secrets__read('x')$$);
grant select on contract to anon, authenticated, service_role, cortex_orchestrator;

-- ---- the contract functions: shape ------------------------------------------------------------
select is((select count(*) from contract), 20::bigint, 'the contract has 20 functions');
select is(
  (select array_agg(fn::text order by fn::text) from contract c join pg_proc p on p.oid = c.fn
   where not p.prosecdef or p.prorettype <> 'jsonb'::regtype
      or not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)),
  null, 'every contract function is security definer, returns jsonb and pins search_path = pg_catalog, pg_temp');
select is(
  (select array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text) from pg_proc p
   where p.pronamespace = 'public'::regnamespace
     and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)),
  null, 'every function in public, definer or not, pins search_path = pg_catalog, pg_temp');

-- ---- catalog-wide: nobody but cortex_orchestrator executes anything, and it only the contract -----
select is(
  (select array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text) from pg_proc p
   where p.pronamespace = 'public'::regnamespace
     and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute'))),
  null, 'anon and authenticated can execute no function in public');
select is(
  (select array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text) from pg_proc p, aclexplode(p.proacl) a
   where p.pronamespace = 'public'::regnamespace and a.grantee = 0),
  null, 'PUBLIC holds EXECUTE on no function in public');
select is(
  (select array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.proacl is null),
  null, 'no function in public is left with default (PUBLIC) privileges');
select is(
  (select array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and has_function_privilege('service_role', p.oid, 'execute')),
  null, 'service_role can execute no function in public (it can read the vault directly: the orchestrator must not use it)');
-- (functions of later migrations join the contract by their grant; the rules below hold for them too)
select is(
  (select array_agg(p.oid::regprocedure::text order by p.oid::regprocedure::text) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and has_function_privilege('cortex_orchestrator', p.oid, 'execute')
     and (not p.prosecdef or not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false))),
  null, 'cortex_orchestrator can execute no internal helper: only security definer functions with a pinned search_path');
select ok(not rolcanlogin and not rolsuper and not rolcreaterole and not rolcreatedb and not rolbypassrls,
  'cortex_orchestrator is NOLOGIN, no superuser, no CREATEROLE/CREATEDB, no BYPASSRLS')
from pg_roles where rolname = 'cortex_orchestrator';
select ok(pg_has_role('authenticator', 'cortex_orchestrator', 'member'),
  'PostgREST''s authenticator may switch to cortex_orchestrator');

-- ---- per function: catalog and a real call as each role -----------------------------------------
select ok(not has_function_privilege('service_role', fn, 'execute'), 'service_role may not execute ' || fn::text)
from contract order by fn::text;
select ok(has_function_privilege('cortex_orchestrator', fn, 'execute'), 'cortex_orchestrator may execute ' || fn::text)
from contract where fn <> 'public.secret_access_log__apply_retention(timestamp with time zone)'::regprocedure
order by fn::text;
select ok(not has_function_privilege('anon', fn, 'execute'), 'anon may not execute ' || fn::text)
from contract order by fn::text;
select ok(not has_function_privilege('authenticated', fn, 'execute'), 'authenticated may not execute ' || fn::text)
from contract order by fn::text;

set local role anon;
select throws_ok(call, '42501', format('permission denied for function %s', (select proname from pg_proc where oid = fn)),
  'anon calling ' || fn::text || ' is denied')
from contract order by fn::text;
reset role;

set local role authenticated;
select throws_ok(call, '42501', format('permission denied for function %s', (select proname from pg_proc where oid = fn)),
  'authenticated calling ' || fn::text || ' is denied')
from contract order by fn::text;
reset role;

-- service_role gets past the privilege check: whatever it gets back is not a permission error
create function pg_temp.sqlstate_of(p_sql text) returns text language plpgsql as $$
begin
  execute p_sql;
  return '00000';
exception when others then
  return sqlstate;
end
$$;
grant execute on function pg_temp.sqlstate_of(text) to service_role, cortex_orchestrator;
set local role cortex_orchestrator;
select isnt(pg_temp.sqlstate_of(call), '42501', 'cortex_orchestrator calling ' || fn::text || ' is not denied')
from contract where fn <> 'public.secret_access_log__apply_retention(timestamp with time zone)'::regprocedure
order by fn::text;
reset role;
set local role service_role;
select is(pg_temp.sqlstate_of(call), '42501', 'service_role calling ' || fn::text || ' is denied')
from contract order by fn::text;
reset role;

-- ---- tables ---------------------------------------------------------------------------------------
select is(
  (select array_agg(c.relname::text order by c.relname::text) from pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p') and not c.relrowsecurity),
  null, 'row-level security is enabled on every table in public');
-- (tables of later migrations are covered by the catalog-wide checks of 12_orchestrator_role.sql)
select ok(
  (select array_agg(c.relname::text order by c.relname::text) from pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p'))
  @> array['deployment_secrets', 'deployment_steps', 'deployments', 'organization_members', 'organizations',
        'platform_secret_versions', 'platform_secrets', 'secret_access_log', 'secret_access_log_chains',
        'secret_read_intents', 'secret_versions', 'secrets'],
  'the tables checked below exist');

select table_privs_are('public', t, 'anon', array[]::text[], 'anon has no privilege on ' || t)
from unnest(array['deployment_secrets', 'deployment_steps', 'deployments', 'organization_members', 'organizations',
  'platform_secret_versions', 'platform_secrets', 'secret_access_log', 'secret_access_log_chains', 'secret_read_intents',
  'secret_versions', 'secrets']) t;
select table_privs_are('public', t, 'authenticated', array['SELECT'], 'authenticated may only select from ' || t)
from unnest(array['deployment_secrets', 'organization_members', 'organizations',
  'secret_access_log', 'secret_access_log_chains', 'secret_read_intents', 'secret_versions', 'secrets']) t;
-- deployments and deployment_steps: no table-wide privilege, SELECT on named columns only (not the
-- recorded failure text nor the fencing token: 20261207130000, 44_rls_failure_text.sql)
select ok(not exists (select 1 from information_schema.table_privileges where table_schema = 'public' and table_name = t
                      and grantee = 'authenticated')
          and not exists (select 1 from information_schema.column_privileges where table_schema = 'public' and table_name = t
                          and grantee = 'authenticated' and privilege_type <> 'SELECT'),
  'authenticated may only select some columns of ' || t)
from unnest(array['deployment_steps', 'deployments']) t;
select table_privs_are('public', t, 'service_role', array['SELECT'],
  'service_role may only select from ' || t || ': the functions are the only way in')
from unnest(array['deployment_secrets', 'deployment_steps', 'deployments', 'organization_members', 'organizations',
  'secret_versions', 'secrets']) t;
select table_privs_are('public', t, 'cortex_orchestrator', array[]::text[], 'cortex_orchestrator has no privilege on ' || t)
from unnest(array['deployment_secrets', 'deployment_steps', 'deployments', 'organization_members', 'organizations',
  'platform_secret_versions', 'platform_secrets', 'secret_access_log', 'secret_access_log_chains', 'secret_read_intents',
  'secret_versions', 'secrets']) t;
select table_privs_are('public', t, 'service_role', array['SELECT'],
  'service_role may only select from ' || t || ': audit rows are written by the functions alone')
from unnest(array['secret_access_log', 'secret_access_log_chains', 'secret_read_intents']) t;
-- platform secrets belong to no organization: no member sees them; changes go through the functions
select table_privs_are('public', t, 'authenticated', array[]::text[], 'authenticated has no privilege on ' || t)
from unnest(array['platform_secret_versions', 'platform_secrets']) t;
select table_privs_are('public', t, 'service_role', array['SELECT'],
  'service_role may only select from ' || t || ': platform secrets change through the audited functions alone')
from unnest(array['platform_secret_versions', 'platform_secrets']) t;
select is(
  (select array_agg(c.relname::text order by c.relname::text) from pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
     and (has_sequence_privilege('anon', c.oid, 'usage') or has_sequence_privilege('authenticated', c.oid, 'usage')
          or has_sequence_privilege('service_role', c.oid, 'usage'))),
  null, 'no API role may use a sequence in public');

select * from finish();
rollback;
