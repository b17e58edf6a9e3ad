-- Review R8 finding 8 (issue 11): a deployment's bindings list gives each secret the version the
-- deployment RUNS (migration 20261205090000_bindings_running_version.sql): while a rotation of a
-- secret runs and the deployment has not moved in it, that rotation's old version. A revoke of
-- another secret, or a rotation of another secret, rebuilds the environment from this list.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(22);
\ir support/read_intent.psql
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;
-- the version a deployment's list gives a secret (null: not listed)
create function pg_temp.listed(p_deployment uuid, p_secret uuid, p_field text default 'version') returns integer
language sql as $$
  select (e ->> p_field)::integer from jsonb_array_elements(public.deployment_secrets__list(p_deployment)) e
  where (e ->> 'secret_id')::uuid = p_secret
$$;
grant execute on function pg_temp.listed(uuid, uuid, text) to cortex_orchestrator;

select 'canary-r8-a-v1-' || md5(random()::text) as a_v1 \gset
select 'canary-r8-a-v2-' || md5(random()::text) as a_v2 \gset
select 'canary-r8-b-' || md5(random()::text) as b_v1 \gset
select public.organizations__create('R8 finding 8') ->> 'id' as org \gset
select public.deployments__create(:'org', 'R8 F8 one', 'r8f8a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d1 \gset
select public.deployments__create(:'org', 'R8 F8 two', 'r8f8b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d2 \gset
select public.deployments__create(:'org', 'R8 F8 three', 'r8f8c-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d3 \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'a_v1', pg_temp.fp(:'a_v1')) ->> 'secret_id' as sa \gset
select public.secrets__create(:'org', 'openai', 'openai', :'b_v1', pg_temp.fp(:'b_v1')) ->> 'secret_id' as sb \gset
select bool_and(public.deployment_secrets__bind(d, 'ANTHROPIC_API_KEY', :'sa') is not null) as b from unnest(array[:'d1', :'d2', :'d3']::uuid[]) d \gset
select public.deployment_secrets__bind(:'d1', 'OPENAI_API_KEY', :'sb') is not null as b \gset
update public.deployments set status = 'provisioning' where id in (:'d1', :'d2', :'d3');
update public.deployments set status = 'ready' where id in (:'d1', :'d2', :'d3');
-- d4 is provisioning when the rotation starts, before its `secrets` step (review R11 finding 1)
select public.deployments__create(:'org', 'R8 F8 four', 'r8f8d-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d4 \gset
select public.deployment_secrets__bind(:'d4', 'ANTHROPIC_API_KEY', :'sa') is not null as b \gset
update public.deployments set status = 'provisioning' where id = :'d4';

set local role cortex_orchestrator;
select is(pg_temp.listed(:'d1', :'sa'), 1, 'no rotation running: the current version');
-- A rotation of A to v2 starts: every deployment is pending in it, still running v1.
select gen_random_uuid() as rot \gset
select public.secret_rotations__start(:'rot', :'sa', :'a_v2', pg_temp.fp(:'a_v2'), 3600) is not null as x \gset
reset role;
select is((select current_version from public.secrets where id = :'sa'), 2, 'set-up: the current version is the new one');
set local role cortex_orchestrator;
select is(pg_temp.listed(:'d1', :'sa'), 1,
  'R8 FINDING 8: a deployment pending in a running rotation is listed at the version it runs (the old one)');
select is(pg_temp.listed(:'d1', :'sa', 'follows'), 2, 'and at the version its binding follows (the new one) as follows');
select is(pg_temp.listed(:'d1', :'sb'), 1, 'another secret of it, not rotating: its current version');
-- R12 finding 3: a read of the new version by a ready deployment (the demo's verify read) changes
-- nothing on its host, and nothing in the listing
select public.deployment_secrets__read(:'d1', null, 'demo-verify', null, p_intent_id => pg_temp.read_intent(:'d1', null)) as r1v \gset
select is((:'r1v'::jsonb) ->> 'status', 'ok', 'set-up: a ready deployment''s own read (the demo''s verify) works');
select is(pg_temp.listed(:'d1', :'sa'), 1,
  'R12 FINDING 3: it does not move the listing: the host still runs the old version');
-- R11 finding 1: d4's `secrets` step runs after the start and reads (and writes) the new version
select is(pg_temp.listed(:'d4', :'sa'), 1, 'd4 before its secrets step: the old version (nothing of the new one read)');
reset role;
-- its `secrets` step (as the step runner records it) around its provisioning read
insert into public.deployment_steps (deployment_id, run, step, status, started_at, operation)
values (:'d4', 1, 'secrets', 'running', clock_timestamp(), 'provision');
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'d4', null, 'r8', 'provision-d4', p_intent_id => pg_temp.read_intent(:'d4', null)) as r4 \gset
reset role;
update public.deployment_steps set status = 'succeeded', finished_at = clock_timestamp()
where deployment_id = :'d4' and run = 1 and step = 'secrets';
set local role cortex_orchestrator;
select is(((:'r4'::jsonb) #>> '{secrets,0,version}')::integer, 2, 'set-up: its provisioning read gives the new version');
select is(pg_temp.listed(:'d4', :'sa'), 2,
  'R11 FINDING 1: a deployment that read the new version in its provisioning is listed at it (not the old one it never ran)');
reset role;
select is((select state from public.secret_rotation_deployments where rotation_id = :'rot' and deployment_id = :'d4'), 'pending',
  'its row in the rotation is still pending (the rotation moves it later, a no-op)');
set local role cortex_orchestrator;
-- what a revoke of B on d1 reads for A: the listed version, which the contract lets it read
select public.deployment_secrets__read_versions(:'d1', array[:'sa']::uuid[], array[pg_temp.listed(:'d1', :'sa')], 'r8',
  p_intent_id => pg_temp.read_intent(:'d1', array[:'sa']::uuid[])) as r1 \gset
select is((:'r1'::jsonb) ->> 'status', 'ok', 'the listed (old) version may be read while the deployment is pending');
select is((:'r1'::jsonb) #>> '{secrets,0,value}', :'a_v1', 'and it is the old value: the host is given what it runs');
-- d2 switches (switching, then switched): from then on it runs the new version
select public.secret_rotation_deployments__set_state(:'rot', :'d2', 'switching', null) is not null as x \gset
select is(pg_temp.listed(:'d2', :'sa'), 1, 'switching (a swap under way, or cut short): still the old version');
select public.secret_rotation_deployments__set_state(:'rot', :'d2', 'switched', null) is not null as x \gset
select is(pg_temp.listed(:'d2', :'sa'), 2, 'switched: the new version');
-- d3 rolls back: pinned to the old version, listed so
select public.secret_rotation_deployments__set_state(:'rot', :'d3', 'switching', null) is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'d3', 'rolled_back', 'unhealthy') is not null as x \gset
select is(pg_temp.listed(:'d3', :'sa'), 1, 'rolled back: the old version it is pinned to');
select is(pg_temp.listed(:'d3', :'sa', 'follows'), 1, 'and follows it (its pin)');
-- d1 switches; the rotation completes: every listing is the binding's own version again
select public.secret_rotation_deployments__set_state(:'rot', :'d1', 'switching', null) is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'d1', 'switched', null) is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'d4', 'skipped', 'deployment_provisioning') is not null as x \gset
select public.secret_rotations__finish(:'rot') is not null as x \gset
select is(pg_temp.listed(:'d1', :'sa'), 2, 'after the rotation: the current version');

-- R11 finding 3: a leak response's `switching` row (the host may already run the new version) is
-- listed at the new version, so that no rebuild puts the leaked key back; a plain rotation's at the old
select public.deployments__create(:'org', 'R8 F8 five', 'r8f8e-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d5 \gset
reset role;
select public.secrets__create(:'org', 'anthropic-leaked', 'anthropic', 'canary-r8-c-v1-' || md5(random()::text), pg_temp.fp('c1')) ->> 'secret_id' as sc \gset
select public.deployment_secrets__bind(:'d5', 'ANTHROPIC_API_KEY', :'sc') is not null as b \gset
update public.deployments set status = 'provisioning' where id = :'d5';
update public.deployments set status = 'ready' where id = :'d5';
set local role cortex_orchestrator;
select gen_random_uuid() as rot2 \gset
select public.secret_rotations__start(:'rot2', :'sc', 'canary-r8-c-v2-' || md5(random()::text), pg_temp.fp('c2'), 0, true) is not null as x \gset
select is(pg_temp.listed(:'d5', :'sc'), 1, 'a leak response, pending: the old version the host runs');
select public.secret_rotation_deployments__set_state(:'rot2', :'d5', 'switching', null) is not null as x \gset
select is(pg_temp.listed(:'d5', :'sc'), 2, 'R11 FINDING 3: a leak response, switching: the new version');
reset role;

-- the grants: the orchestrator's role only
select ok(not has_function_privilege('authenticated', 'public.deployment_secrets__list(uuid)', 'execute')
  and not has_function_privilege('service_role', 'public.deployment_secrets__list(uuid)', 'execute')
  and not has_function_privilege('anon', 'public.deployment_secrets__list(uuid)', 'execute'),
  'only cortex_orchestrator may list a deployment''s bindings');
select ok(has_function_privilege('cortex_orchestrator', 'public.deployment_secrets__list(uuid)', 'execute'),
  'cortex_orchestrator may');

select * from finish();
rollback;
