-- One deployment's row in a rotation (20261208090000_rotation_row_results.sql): the rotate job's
-- re-read under its lease (secret_rotation_deployments__get) and set_state's answer are that one
-- row, not the rotation with every deployment's row (which made a rotation over N deployments
-- build O(N²) rows, N of them per set_state under the rotation's row lock).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(22);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- privileges ------------------------------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.secret_rotation_deployments__get(uuid, uuid)', 'execute'),
  r || ' may not execute secret_rotation_deployments__get')
from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(has_function_privilege('cortex_orchestrator', 'public.secret_rotation_deployments__get(uuid, uuid)', 'execute')
  and (select p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp'] from pg_proc p
       where p.oid = 'public.secret_rotation_deployments__get(uuid, uuid)'::regprocedure),
  'cortex_orchestrator may execute it; security definer, search_path pinned');
select ok(not has_function_privilege(r, 'public.secret_rotation_deployments__json(uuid, uuid)', 'execute'),
  r || ' may not execute the internal secret_rotation_deployments__json')
from unnest(array['anon', 'authenticated', 'service_role', 'cortex_orchestrator']) r;

-- ---- fixtures: org A's secret bound to three deployments; a fourth deployment not bound -------------
select public.organizations__create('R46 A') ->> 'id' as org \gset
select public.deployments__create(:'org', 'R46 1', 'r46a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d1 \gset
select public.deployments__create(:'org', 'R46 2', 'r46b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d2 \gset
select public.deployments__create(:'org', 'R46 3', 'r46c-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d3 \gset
select public.deployments__create(:'org', 'R46 4', 'r46d-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d_out \gset
select 'canary-r46-' || md5(random()::text) as v \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v', pg_temp.fp(:'v')) ->> 'secret_id' as s \gset
select bool_and(public.deployment_secrets__bind(d, 'ANTHROPIC_API_KEY', :'s') is not null) as b
from unnest(array[:'d1', :'d2', :'d3']::uuid[]) d \gset
update public.deployments set status = 'provisioning' where id in (:'d1', :'d2', :'d3');
update public.deployments set status = 'ready' where id in (:'d1', :'d2', :'d3');
select gen_random_uuid() as rot \gset
select 'canary-r46-new-' || md5(random()::text) as v_new \gset

set local role cortex_orchestrator;
select public.secret_rotations__start(:'rot', :'s', :'v_new', pg_temp.fp(:'v_new'), 3600, false, 'r46', 'rotate-r46',
  p_org_id => :'org') is not null as x \gset

-- ---- secret_rotation_deployments__get -----------------------------------------------------------------
select is(public.secret_rotation_deployments__get(:'rot', :'d2') - 'updated_at',
  jsonb_build_object('rotation_id', :'rot', 'rotation_state', 'running', 'to_version', 2,
    'deployment_id', :'d2', 'from_version', 1, 'state', 'pending', 'reason', null, 'swap_mode', null),
  'get: the one row, pending, with its rotation''s id, state and target version; no other deployment''s');

-- ---- set_state answers with the row it recorded ---------------------------------------------------------
select public.secret_rotation_deployments__set_state(:'rot', :'d1', 'switching', p_actor => 'r46', p_job_id => 'rotate-r46') as r1 \gset
select is(:'r1'::jsonb - 'updated_at',
  jsonb_build_object('rotation_id', :'rot', 'rotation_state', 'running', 'to_version', 2,
    'deployment_id', :'d1', 'from_version', 1, 'state', 'switching', 'reason', null, 'swap_mode', null),
  'set_state returns the row it recorded (switching), not the rotation');
select ok(not (:'r1'::jsonb ? 'deployments'), 'no `deployments` list in its answer');
select is(public.secret_rotation_deployments__get(:'rot', :'d1') ->> 'state', 'switching', 'get reads the new state');
select is(public.secret_rotation_deployments__get(:'rot', :'d2') ->> 'state', 'pending', 'the other rows are untouched');
select public.secret_rotation_deployments__set_state(:'rot', :'d1', 'switched', null, 'blue-green',
  p_actor => 'r46', p_job_id => 'rotate-r46') as r2 \gset
select is((:'r2'::jsonb ->> 'state') || ' ' || (:'r2'::jsonb ->> 'swap_mode') || ' ' || (:'r2'::jsonb ->> 'deployment_id'),
  'switched blue-green ' || :'d1', 'an end state: the row, with its swap mode');
select is(public.secret_rotation_deployments__set_state(:'rot', :'d1', 'switched', null, 'blue-green',
  p_actor => 'r46', p_job_id => 'rotate-r46') - 'updated_at', :'r2'::jsonb - 'updated_at',
  'a retry repeating a recorded end state returns the same row');
select public.secret_rotation_deployments__set_state(:'rot', :'d2', 'failed', 'ssh_connect_failed',
  p_actor => 'r46', p_job_id => 'rotate-r46') as r3 \gset
select is((:'r3'::jsonb ->> 'state') || ' ' || (:'r3'::jsonb ->> 'reason'), 'failed ssh_connect_failed',
  'a failed from pending: the row with its reason code');
select ok(public.secret_rotations__get(:'rot') -> 'deployments' @> jsonb_build_array(
    jsonb_build_object('deployment_id', :'d1', 'state', 'switched'),
    jsonb_build_object('deployment_id', :'d2', 'state', 'failed'),
    jsonb_build_object('deployment_id', :'d3', 'state', 'pending')),
  'the rotation''s own document (the API''s) still lists every deployment');

-- ---- absent, bad input, no value ------------------------------------------------------------------------
select is(public.secret_rotation_deployments__get(:'rot', :'d_out'), null::jsonb,
  'a deployment not in the rotation: null (the job leaves it), not another row');
select throws_ok(format('select public.secret_rotation_deployments__get(%L, %L)', gen_random_uuid(), :'d1'),
  'P0002', null, 'an unknown rotation: not found');
select throws_ok(format('select public.secret_rotation_deployments__get(null, %L)', :'d1'),
  '22023', 'rotation_id: is required', 'a null rotation: the field is named');
select throws_ok(format('select public.secret_rotation_deployments__get(%L, null)', :'rot'),
  '22023', 'deployment_id: is required', 'a null deployment: the field is named');
select ok((public.secret_rotation_deployments__get(:'rot', :'d1')::text || :'r1' || :'r2' || :'r3')
    not like '%canary-r46%',
  'no answer holds the old or the new value');
reset role;

select * from finish();
rollback;
