-- Review R2 (issue 11): the provisioning read's pins (20261202110000_rotation_pins.sql) name a
-- version of the binding's own secret only, and only one still in service. A pin is an integer
-- on the binding: a pin naming a retired version (its vault row still there: retirement here is
-- the flag alone) or a version the secret never had reads as an audited error with no value, never
-- as the current version nor as another secret's version of that number (of this org or another).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(9);
\ir support/read_intent.psql
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

select 'canary-r2-a-' || md5(random()::text) as v_a \gset
select 'canary-r2-o-' || md5(random()::text) as v_o \gset
select 'canary-r2-b-' || md5(random()::text) as v_b \gset

select public.organizations__create('R2 Org A') ->> 'id' as org_a \gset
select public.organizations__create('R2 Org B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'R2', 'r2-pins-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.secrets__create(:'org_a', 'anthropic', 'anthropic', :'v_a', pg_temp.fp(:'v_a')) ->> 'secret_id' as s_a \gset
select public.secrets__create(:'org_a', 'openai', 'openai', :'v_o', pg_temp.fp(:'v_o')) ->> 'secret_id' as s_o \gset
select public.secrets__create(:'org_b', 'anthropic', 'anthropic', :'v_b', pg_temp.fp(:'v_b')) ->> 'secret_id' as s_b \gset
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'s_a') is not null as b \gset
update public.deployments set status = 'provisioning' where id = :'dep';

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
create function pg_temp.new_log(p_outcome text, p_job text)
returns setof public.secret_access_log language sql as $$
  select * from public.secret_access_log l
  where l.id > (select id from log_mark) and l.operation = 'read' and l.outcome = p_outcome and l.job_id = p_job
$$;

-- ---- a pin on a retired version (the flag only: its vault row still decrypts) ----------------
update public.deployment_secrets set version = 1 where deployment_id = :'dep' and secret_id = :'s_a';
update public.secret_versions set retired_at = now() where secret_id = :'s_a' and version = 1;
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep', null, 'worker', 'r2-retired',
  p_intent_id => pg_temp.read_intent(:'dep', null)) as r_retired \gset
reset role;
select is((:'r_retired'::jsonb) ->> 'status', 'error', 'a pin on a retired version reads as an error');
select ok((:'r_retired'::jsonb)::text not like '%canary%', 'and returns no value (neither the retired one nor another)');
select is((select count(*) from pg_temp.new_log('error', 'r2-retired') l where l.secret_id = :'s_a' and l.version = 1),
  1::bigint, 'audited as an error naming the pinned version');
select is((select count(*) from pg_temp.new_log('success', 'r2-retired')), 0::bigint, 'and no success row');

-- ---- a pin on a version the secret never had, which other secrets (this org's, another's) have -----
update public.secret_versions set retired_at = null where secret_id = :'s_a' and version = 1;
update public.deployment_secrets set version = 2 where deployment_id = :'dep' and secret_id = :'s_a';
-- version 2 of the org's other secret and of another org's secret, each a well-formed vault row
insert into public.secret_versions (secret_id, version, vault_secret_id, fingerprint, display_prefix)
  select x.id, 2, vault.create_secret(x.v, public.secrets__vault_name(s.org_id, s.deployment_id, s.id, 2)),
    pg_temp.fp(x.v), 'sk-r2'
  from (values (:'s_o'::uuid, :'v_o'), (:'s_b'::uuid, :'v_b')) as x(id, v) join public.secrets s on s.id = x.id;
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep', null, 'worker', 'r2-absent',
  p_intent_id => pg_temp.read_intent(:'dep', null)) as r_absent \gset
reset role;
select is((:'r_absent'::jsonb) ->> 'status', 'error', 'a pin on a version the secret never had reads as an error');
select ok((:'r_absent'::jsonb)::text not like '%canary%', 'with no value: not the current one, not another secret''s version 2');
select is((select count(*) from pg_temp.new_log('error', 'r2-absent') l where l.secret_id = :'s_a' and l.version = 2),
  1::bigint, 'audited as an error naming the pinned version');

-- ---- the pin removed: the current version again, audited as such -------------------------------
update public.deployment_secrets set version = null where deployment_id = :'dep' and secret_id = :'s_a';
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep', null, 'worker', 'r2-current',
  p_intent_id => pg_temp.read_intent(:'dep', null)) as r_current \gset
reset role;
select is((:'r_current'::jsonb) #>> '{secrets,0,value}', :'v_a', 'unpinned: the current version''s value');
select is((select array_agg(l.version) from pg_temp.new_log('success', 'r2-current') l where l.secret_id = :'s_a'),
  array[1], 'one success row naming version 1');

select * from finish();
rollback;
