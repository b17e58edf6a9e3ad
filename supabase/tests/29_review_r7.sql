-- Review R7 (issue 11), attacks as a holder of the orchestrator's role (cortex_orchestrator) that
-- the contract REFUSES (guards; the findings of this review that it does not refuse are in the
-- review's report, not here): a long-replaced version stays unreadable and unpinnable while a
-- rotation of its secret runs (only the rotation's from and to versions open), the version a
-- pending host still runs cannot be retired under it, a rotation id cannot be replayed across
-- organisations, another org's deployment cannot be moved through a rotation, the step records
-- are reachable through functions only (deployment_steps__reopen the only way back to pending),
-- and the org's chain still verifies after all of it.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(14);
\ir support/read_intent.psql
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

select 'canary-r7g-v1-' || md5(random()::text) as v1 \gset
select 'canary-r7g-v2-' || md5(random()::text) as v2 \gset
select 'canary-r7g-v3-' || md5(random()::text) as v3 \gset
select public.organizations__create('R7 Guard A') ->> 'id' as org_a \gset
select public.organizations__create('R7 Guard B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'R7 A', 'r7g-a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org_b', 'R7 B', 'r7g-b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_b \gset
select public.secrets__create(:'org_a', 'anthropic', 'anthropic', :'v1', pg_temp.fp(:'v1')) ->> 'secret_id' as s \gset
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'s') is not null as b \gset
update public.deployments set status = 'provisioning' where id in (:'dep', :'dep_b');
update public.deployments set status = 'ready' where id in (:'dep', :'dep_b');

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
create function pg_temp.new_log(p_operation text, p_outcome text, p_job text)
returns setof public.secret_access_log language sql as $$
  select * from public.secret_access_log l
  where l.id > (select id from log_mark) and l.operation = p_operation and l.outcome = p_outcome and l.job_id = p_job
$$;

-- ---- a long-replaced version during a rotation of its secret ---------------------------------------
-- version 1 replaced outside a rotation (secrets__add_version: nothing retires it), then a rotation
-- 2 -> 3 runs: only 2 and 3 open for this deployment, never 1
set local role cortex_orchestrator;
select (public.secrets__add_version(:'s', :'v2', pg_temp.fp(:'v2')) ->> 'version') as x \gset
select gen_random_uuid() as rot \gset
select public.secret_rotations__start(:'rot', :'s', :'v3', pg_temp.fp(:'v3'), 3600, false, 'r7', 'rotate-r7',
  p_org_id => :'org_a') is not null as x \gset
select public.deployment_secrets__read_versions(:'dep', array[:'s']::uuid[], array[1], 'r7', 'r7-old-read',
  p_intent_id => pg_temp.read_intent(:'dep', array[:'s']::uuid[])) as r_old \gset
select public.deployment_secrets__set_version(:'dep', :'s', 1, 'r7', 'r7-old-pin') as p_old \gset
reset role;
select is((:'r_old'::jsonb) ->> 'status', 'denied',
  'a version replaced before the running rotation (neither its from nor its to) is not readable');
select ok((:'r_old'::jsonb)::text not like '%canary%', 'and the denial holds no value');
select is((select count(*) from pg_temp.new_log('read', 'denied', 'r7-old-read') l where l.secret_id = :'s' and l.version = 1),
  1::bigint, 'the refused read is audited naming the version');
select is((:'p_old'::jsonb) ->> 'status', 'denied', 'nor can the deployment be pinned to it');
select is((select version from public.deployment_secrets where deployment_id = :'dep'), null::integer,
  'the binding still follows the current version');

-- ---- the version a pending host runs is not retired under it --------------------------------------
set local role cortex_orchestrator;
select throws_ok(format('select public.secret_versions__retire(%L, 2, %L)', :'s', 'r7'), '22023', null,
  'the running rotation''s from version (a host not switched yet) cannot be retired');
reset role;
select is((select retired_at from public.secret_versions where secret_id = :'s' and version = 2), null::timestamptz,
  'and stays in the vault');

-- ---- a rotation id is not replayed across organisations ---------------------------------------------
set local role cortex_orchestrator;
select throws_ok(format('select public.secret_rotations__start(%L, %L, %L, %L, 3600, p_org_id => %L)',
    :'rot', :'s', :'v3', pg_temp.fp(:'v3'), :'org_b'),
  '23505', null, 'the same rotation id from another organisation is refused (not answered with org A''s rotation)');
select throws_ok(format('select public.secret_rotations__get(%L, %L)', :'rot', :'org_b'), 'P0002', null,
  'nor is org A''s rotation visible to org B');
-- ---- another org's deployment cannot be moved through org A's rotation ------------------------------
select throws_ok(format($$select public.secret_rotation_deployments__set_state(%L, %L, 'switching')$$, :'rot', :'dep_b'),
  'P0002', null, 'a deployment of another organisation is not part of the rotation');
reset role;
select is((select status from public.deployments where id = :'dep_b'), 'ready', 'and is left as it was');

-- ---- step records: functions only --------------------------------------------------------------------
select ok(not has_table_privilege('cortex_orchestrator', 'public.deployment_steps', 'update')
  and not has_table_privilege('cortex_orchestrator', 'public.deployment_steps', 'insert')
  and not has_table_privilege('cortex_orchestrator', 'public.deployment_steps', 'delete'),
  'cortex_orchestrator cannot write step records directly (reopen is the only way back to pending)');
select ok(not has_function_privilege('cortex_orchestrator', 'public.deployments__lock(uuid)', 'execute'),
  'nor lock a deployment row outside the contract''s functions');

select is((select public.secret_access_log__verify(:'org_a') ->> 'ok')::boolean, true, 'the org''s chain verifies');

select * from finish();
rollback;
