-- The orchestrator's own role (security review, items 3 and 4). As `service_role` the review read
-- vault.decrypted_secrets without an audit row, and repointed secret_versions.vault_secret_id so
-- that deployment_secrets__read returned the platform SSH key, audited as an ordinary read of org
-- A. cortex_orchestrator holds EXECUTE on the contract and nothing else; no API role writes a
-- table; and a read decrypts only the vault row whose name the scheme gives the version it reads.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(27);
\ir support/read_intent.psql

create function pg_temp.sqlstate_of(p_sql text) returns text language plpgsql as $$
begin
  execute p_sql;
  return '00000';
exception when others then
  return sqlstate;
end
$$;
grant execute on function pg_temp.sqlstate_of(text) to cortex_orchestrator, service_role;

-- ---- no vault, no table, no TEMP, no retention -----------------------------------------------------
select is(
  (select array_agg(c.oid::regclass::text order by 1) from pg_class c
   where c.relnamespace in ('public'::regnamespace, 'vault'::regnamespace) and c.relkind in ('r', 'p', 'v', 'm', 'S')
     and (has_table_privilege('cortex_orchestrator', c.oid, 'select, insert, update, delete, truncate, references, trigger')
          or (c.relkind = 'S' and has_sequence_privilege('cortex_orchestrator', c.oid, 'usage, select, update')))),
  null, 'cortex_orchestrator holds no privilege on any table, view or sequence in public or vault');
select ok(not has_schema_privilege('cortex_orchestrator', 'vault', 'usage'), 'cortex_orchestrator cannot use schema vault');
select is(
  (select array_agg(r.rolname || ' ' || c.oid::regclass::text order by 1) from pg_class c,
     pg_roles r
   where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
     and r.rolname in ('anon', 'authenticated', 'service_role', 'cortex_orchestrator')
     and has_table_privilege(r.rolname, c.oid, 'insert, update, delete, truncate, references, trigger')),
  null, 'no API role may insert, update, delete, truncate, reference or trigger on any table in public');
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and has_function_privilege('service_role', p.oid, 'execute')),
  null, 'service_role executes no function in public');

-- each attempt as the role; its SQLSTATE kept in a setting and checked after reset role
create function pg_temp.attempt(p_name text, p_sql text) returns void language plpgsql as $$
begin
  perform set_config('t.' || p_name, pg_temp.sqlstate_of(p_sql), true);
end
$$;
grant execute on function pg_temp.attempt(text, text) to cortex_orchestrator;

select public.organizations__create('Role Test A') ->> 'id' as org_a \gset
select public.organizations__create('Role Test B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'A', 'test-role-a') ->> 'id' as dep_a \gset
select public.deployments__create(:'org_b', 'B', 'test-role-b') ->> 'id' as dep_b \gset
select 'sk-role-a-' || encode(extensions.gen_random_bytes(12), 'hex') as value_a \gset
select 'sk-role-b-' || encode(extensions.gen_random_bytes(12), 'hex') as value_b \gset
select 'platform-' || encode(extensions.gen_random_bytes(12), 'hex') as value_p \gset
select public.secrets__create(:'org_a', 'key', 'other', :'value_a', repeat('ab', 32)) ->> 'secret_id' as s_a \gset
select public.secrets__create(:'org_b', 'key', 'other', :'value_b', repeat('ab', 32)) ->> 'secret_id' as s_b \gset
select public.deployment_secrets__bind(:'dep_a', 'KEY', :'s_a') is not null as bound \gset
select public.deployment_secrets__bind(:'dep_b', 'KEY', :'s_b') is not null as bound \gset
select public.platform_secrets__create('pgtap-role-key', :'value_p', repeat('ab', 32)) ->> 'secret_id' as ps \gset
select vault_secret_id as vault_a from public.secret_versions where secret_id = :'s_a' \gset
select vault_secret_id as vault_b from public.secret_versions where secret_id = :'s_b' \gset
select vault_secret_id as vault_p from public.platform_secret_versions where secret_id = :'ps' \gset

set local role cortex_orchestrator;
select pg_temp.attempt('vault_view', 'select decrypted_secret from vault.decrypted_secrets');
select pg_temp.attempt('vault_table', 'select secret from vault.secrets');
select pg_temp.attempt('vault_create', $$select vault.create_secret('x', 'x')$$);
select pg_temp.attempt('vault_delete', 'delete from vault.secrets');
select pg_temp.attempt('repoint', format('update public.secret_versions set vault_secret_id = %L where secret_id = %L', :'vault_p', :'s_a'));
select pg_temp.attempt('insert_org', $$insert into public.organizations (name) values ('x')$$);
select pg_temp.attempt('bind_direct', format('insert into public.deployment_secrets (deployment_id, env_var, secret_id) values (%L, %L, %L)', :'dep_a', 'STOLEN', :'s_b'));
select pg_temp.attempt('status_direct', format('update public.deployments set status = %L where id = %L', 'provisioning', :'dep_a'));
select pg_temp.attempt('delete_log', 'delete from public.secret_access_log');
select pg_temp.attempt('truncate_heads', 'truncate public.secret_access_log_chains');
select pg_temp.attempt('temp_table', 'create temp table t (x int)');
select pg_temp.attempt('retention', $$select public.secret_access_log__apply_retention(now())$$);
reset role;
select is(current_setting('t.vault_view'), '42501', 'cortex_orchestrator cannot read vault.decrypted_secrets');
select is(current_setting('t.vault_table'), '42501', 'cortex_orchestrator cannot read vault.secrets');
select is(current_setting('t.vault_create'), '42501', 'cortex_orchestrator cannot call vault.create_secret');
select is(current_setting('t.vault_delete'), '42501', 'cortex_orchestrator cannot delete vault rows');
select is(current_setting('t.repoint'), '42501', 'cortex_orchestrator cannot repoint a version''s vault reference');
select is(current_setting('t.insert_org'), '42501', 'cortex_orchestrator cannot insert into organizations');
select is(current_setting('t.bind_direct'), '42501', 'cortex_orchestrator cannot bind another org''s secret by a direct insert');
select is(current_setting('t.status_direct'), '42501', 'cortex_orchestrator cannot update deployments directly');
select is(current_setting('t.delete_log'), '42501', 'cortex_orchestrator cannot delete audit rows');
select is(current_setting('t.truncate_heads'), '42501', 'cortex_orchestrator cannot truncate the chain heads');
select is(current_setting('t.temp_table'), '42501', 'cortex_orchestrator cannot create a temp table');
select is(current_setting('t.retention'), '42501', 'cortex_orchestrator cannot call retention');

set local role service_role;
select pg_temp.attempt('sr_repoint', format('update public.secret_versions set vault_secret_id = %L where secret_id = %L', :'vault_p', :'s_a'));
select pg_temp.attempt('sr_bind', format('insert into public.deployment_secrets (deployment_id, env_var, secret_id) values (%L, %L, %L)', :'dep_a', 'STOLEN', :'s_b'));
select pg_temp.attempt('sr_read', format('select public.deployment_secrets__read(%L)', :'dep_a'));
select pg_temp.attempt('sr_retention', $$select public.secret_access_log__apply_retention(now())$$);
reset role;
select is(current_setting('t.sr_repoint'), '42501', 'service_role cannot repoint a version''s vault reference (review item 3)');
select is(current_setting('t.sr_bind'), '42501', 'service_role cannot write a binding');
select is(current_setting('t.sr_read'), '42501', 'service_role cannot call deployment_secrets__read');
select is(current_setting('t.sr_retention'), '42501', 'service_role cannot call retention');

-- ---- a repointed reference reads as missing, never as another key ----------------------------------
-- As the table owner (the only one left who can): org A's version now points at the platform key.
update public.secret_versions set vault_secret_id = :'vault_p' where secret_id = :'s_a';
create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_a', null, 'role-test', p_intent_id => pg_temp.read_intent(:'dep_a', null)) as r1 \gset
reset role;
select is((:'r1'::jsonb) ->> 'status', 'error', 'a version pointing at the platform key''s vault row: error');
select ok(:'r1' not like '%' || :'value_p' || '%' and :'r1' not like '%' || :'value_a' || '%', 'and no value is returned');
select is((select array_agg(l.operation || '/' || l.outcome) from public.secret_access_log l where l.id > (select id from log_mark)),
  array['read/error'], 'audited as an error, not a read');

-- org A's version pointing at org B's key (B's reference moved aside first: references are unique)
update public.secret_versions set vault_secret_id = gen_random_uuid() where secret_id = :'s_b';
update public.secret_versions set vault_secret_id = :'vault_b' where secret_id = :'s_a';
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_a', null, 'role-test', p_intent_id => pg_temp.read_intent(:'dep_a', null)) as r2 \gset
reset role;
select ok((:'r2'::jsonb) ->> 'status' = 'error' and :'r2' not like '%' || :'value_b' || '%',
  'a version pointing at another org''s vault row: error, no value');

-- the platform key's version pointing at org A's vault row
update public.secret_versions set vault_secret_id = :'vault_a' where secret_id = :'s_a';
update public.platform_secret_versions set vault_secret_id = :'vault_a' where secret_id = :'ps';
set local role cortex_orchestrator;
select public.platform_secrets__read('pgtap-role-key', p_intent_id => pg_temp.platform_intent('pgtap-role-key')) as r3 \gset
reset role;
select ok((:'r3'::jsonb) ->> 'status' = 'error' and :'r3' not like '%' || :'value_a' || '%',
  'a platform version pointing at an org''s vault row: error, no value');
-- and with the references back where they belong, both read
update public.platform_secret_versions set vault_secret_id = :'vault_p' where secret_id = :'ps';
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_a', p_intent_id => pg_temp.read_intent(:'dep_a', null)) -> 'secrets' -> 0 ->> 'value' as back_a \gset
select public.platform_secrets__read('pgtap-role-key', p_intent_id => pg_temp.platform_intent('pgtap-role-key')) ->> 'value' as back_p \gset
reset role;
select is(:'back_a'::text, :'value_a'::text, 'control: org A reads its own key');
select is(:'back_p'::text, :'value_p'::text, 'control: the platform key reads');

select * from finish();
rollback;
