-- secret_rotations__pending_for_deployment (20261208100000_rotation_joint_swap.sql, review R11
-- finding 2): the running rotations in which a deployment's row is still `pending`, which a rotate
-- job's swap of that deployment may carry along (a joint swap). Ids and version numbers only;
-- cortex_orchestrator only.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(15);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- privileges ------------------------------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.secret_rotations__pending_for_deployment(uuid)', 'execute'),
  r || ' may not execute secret_rotations__pending_for_deployment')
from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(has_function_privilege('cortex_orchestrator', 'public.secret_rotations__pending_for_deployment(uuid)', 'execute')
  and (select p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp'] from pg_proc p
       where p.oid = 'public.secret_rotations__pending_for_deployment(uuid)'::regprocedure),
  'cortex_orchestrator may execute it; security definer, search_path pinned');

-- ---- fixtures: d1 bound to secrets a and b, d2 to a only ---------------------------------------------
select public.organizations__create('R47') ->> 'id' as org \gset
select public.deployments__create(:'org', 'R47 1', 'r47a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d1 \gset
select public.deployments__create(:'org', 'R47 2', 'r47b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d2 \gset
select 'canary-r47-a-' || md5(random()::text) as va \gset
select 'canary-r47-b-' || md5(random()::text) as vb \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'va', pg_temp.fp(:'va')) ->> 'secret_id' as sa \gset
select public.secrets__create(:'org', 'openai', 'openai', :'vb', pg_temp.fp(:'vb')) ->> 'secret_id' as sb \gset
select public.deployment_secrets__bind(:'d1', 'ANTHROPIC_API_KEY', :'sa') is not null as x \gset
select public.deployment_secrets__bind(:'d1', 'OPENAI_API_KEY', :'sb') is not null as x \gset
select public.deployment_secrets__bind(:'d2', 'ANTHROPIC_API_KEY', :'sa') is not null as x \gset
update public.deployments set status = 'provisioning' where id in (:'d1', :'d2');
update public.deployments set status = 'ready' where id in (:'d1', :'d2');
select gen_random_uuid() as ra \gset
select gen_random_uuid() as rb \gset
select 'canary-r47-a-new-' || md5(random()::text) as va2 \gset
select 'canary-r47-b-new-' || md5(random()::text) as vb2 \gset

set local role cortex_orchestrator;
select is(public.secret_rotations__pending_for_deployment(:'d1'), '[]'::jsonb, 'no rotation running: nothing');
select public.secret_rotations__start(:'ra', :'sa', :'va2', pg_temp.fp(:'va2'), 3600, false, 'r47', 'rotate-r47a',
  p_org_id => :'org') is not null as x \gset
select public.secret_rotations__start(:'rb', :'sb', :'vb2', pg_temp.fp(:'vb2'), 3600, true, 'r47', 'rotate-r47b',
  p_org_id => :'org') is not null as x \gset

-- (one transaction: both have the same created_at, so the order is compared apart from it)
select is((select jsonb_agg(e order by e ->> 'rotation_id') from jsonb_array_elements(public.secret_rotations__pending_for_deployment(:'d1')) e),
  (select jsonb_agg(e order by e ->> 'rotation_id') from jsonb_array_elements(jsonb_build_array(
    jsonb_build_object('rotation_id', :'ra', 'secret_id', :'sa', 'from_version', 1, 'to_version', 2, 'leaked', false),
    jsonb_build_object('rotation_id', :'rb', 'secret_id', :'sb', 'from_version', 1, 'to_version', 2, 'leaked', true))) e),
  'both rotations, with the versions and the leak flag');
select is(public.secret_rotations__pending_for_deployment(:'d2'),
  jsonb_build_array(
    jsonb_build_object('rotation_id', :'ra', 'secret_id', :'sa', 'from_version', 1, 'to_version', 2, 'leaked', false)),
  'a deployment bound to one of the secrets: that rotation only');

-- a row that is no longer pending is not carried: switching (another swap under way or cut), then final
select public.secret_rotation_deployments__set_state(:'rb', :'d1', 'switching', p_actor => 'r47', p_job_id => 'rotate-r47b') is not null as x \gset
select is(jsonb_path_query_array(public.secret_rotations__pending_for_deployment(:'d1'), '$[*].rotation_id'),
  jsonb_build_array(:'ra'), 'a switching row is not listed (its own rotation resumes it)');
select public.secret_rotation_deployments__set_state(:'rb', :'d1', 'switched', 'joint_swap', 'blue-green',
  p_actor => 'r47', p_job_id => 'rotate-r47a') is not null as x \gset
select is(jsonb_path_query_array(public.secret_rotations__pending_for_deployment(:'d1'), '$[*].rotation_id'),
  jsonb_build_array(:'ra'), 'nor a switched one');
select is(public.secret_rotation_deployments__get(:'rb', :'d1') ->> 'reason', 'joint_swap',
  'a joint switch is recorded with its reason code');
reset role;
select is((select version from public.deployment_secrets where deployment_id = :'d1' and secret_id = :'sb'), null::integer,
  'and the binding follows the new (current) version');
select ok(exists (select 1 from public.secret_access_log l where l.secret_id = :'sb' and l.deployment_id = :'d1'
                  and l.operation = 'bind' and l.job_id = 'rotate-r47a'),
  'the move is audited with the job that carried it');

-- a rotation that is no longer running is not listed, even with a pending row
update public.secret_rotations set state = 'completed', finished_at = now() where id = :'ra';
set local role cortex_orchestrator;
select is(public.secret_rotations__pending_for_deployment(:'d2'), '[]'::jsonb, 'a completed rotation is not listed');

-- ---- bad input, unknown, no value ----------------------------------------------------------------------
select throws_ok('select public.secret_rotations__pending_for_deployment(null)', '22023', 'deployment_id: is required',
  'a null deployment: the field is named');
select is(public.secret_rotations__pending_for_deployment(gen_random_uuid()), '[]'::jsonb, 'an unknown deployment: nothing');
reset role;

select * from finish();
rollback;
