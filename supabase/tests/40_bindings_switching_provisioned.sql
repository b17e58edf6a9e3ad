-- Review R17 finding 1 (issue 11): a deployment provisioned after a rotation started runs the new
-- version; its `switching` row (the rotation job took it up, its attempt cut or failed) is listed at
-- the new version too (migration 20261206120000_bindings_switching_provisioned.sql), not at the old
-- one it never ran: a rebuild of its environment (a revoke, another secret's rotation) must not
-- write the old version onto it, and the rotate job reads this listing to decide a swap back.
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
create function pg_temp.listed(p_deployment uuid, p_secret uuid) returns integer
language sql as $$
  select (e ->> 'version')::integer from jsonb_array_elements(public.deployment_secrets__list(p_deployment)) e
  where (e ->> 'secret_id')::uuid = p_secret
$$;
grant execute on function pg_temp.listed(uuid, uuid) to cortex_orchestrator;

select 'canary-r17-v1-' || md5(random()::text) as v1 \gset
select 'canary-r17-v2-' || md5(random()::text) as v2 \gset
select 'canary-r17-w2-' || md5(random()::text) as w2 \gset
select public.organizations__create('R17 finding 1') ->> 'id' as org \gset
-- d1: provisioned before the rotation (runs v1); d2: provisioning when it starts
select public.deployments__create(:'org', 'R17 one', 'r17a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d1 \gset
select public.deployments__create(:'org', 'R17 two', 'r17b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as d2 \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v1', pg_temp.fp(:'v1')) ->> 'secret_id' as sa \gset
select public.secrets__create(:'org', 'other', 'anthropic', :'v1' || 'x', pg_temp.fp(:'v1' || 'x')) ->> 'secret_id' as sl \gset
select bool_and(public.deployment_secrets__bind(d, 'ANTHROPIC_API_KEY', :'sa') is not null) as b from unnest(array[:'d1', :'d2']::uuid[]) d \gset
select bool_and(public.deployment_secrets__bind(d, 'OTHER_API_KEY', :'sl') is not null) as b from unnest(array[:'d1', :'d2']::uuid[]) d \gset
update public.deployments set status = 'provisioning' where id in (:'d1', :'d2');
update public.deployments set status = 'ready' where id = :'d1';

set local role cortex_orchestrator;
select gen_random_uuid() as rot \gset
select public.secret_rotations__start(:'rot', :'sa', :'v2', pg_temp.fp(:'v2'), 3600) is not null as x \gset
reset role;
-- d2's `secrets` step runs after the start and reads the new version
insert into public.deployment_steps (deployment_id, run, step, status, started_at, operation)
values (:'d2', 1, 'secrets', 'running', clock_timestamp(), 'provision');
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'d2', null, 'r17', 'provision-d2', p_intent_id => pg_temp.read_intent(:'d2', null)) as r2 \gset
reset role;
update public.deployment_steps set status = 'succeeded', finished_at = clock_timestamp()
where deployment_id = :'d2' and run = 1 and step = 'secrets';
update public.deployments set status = 'ready' where id = :'d2';
set local role cortex_orchestrator;
select is(((:'r2'::jsonb) #>> '{secrets,0,version}')::integer, 2, 'set-up: d2''s provisioning read gives the new version');
select is(pg_temp.listed(:'d2', :'sa'), 2, 'pending, provisioned on the new version: listed at it (R11 finding 1, unchanged)');
-- the rotation job takes both up: `switching`
select public.secret_rotation_deployments__set_state(:'rot', :'d1', 'switching', null) is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'d2', 'switching', null) is not null as x \gset
select is(pg_temp.listed(:'d2', :'sa'), 2,
  'R17 FINDING 1: switching, provisioned on the new version: still listed at the new version (it never ran the old one)');
select is(pg_temp.listed(:'d1', :'sa'), 1, 'switching, provisioned before the rotation: the old version (unchanged)');
-- R18 finding 1: d1's `ready` step row left `running` (a worker died between setting `ready` and
-- recording the step), and the rotate job's own read of the new version for its switching row
reset role;
insert into public.deployment_steps (deployment_id, run, step, status, started_at, operation)
values (:'d1', 1, 'ready', 'running', clock_timestamp() - interval '1 hour', 'provision');
set local role cortex_orchestrator;
select public.deployment_secrets__read_versions(:'d1', array[:'sa']::uuid[], array[2], 'r18',
  p_intent_id => pg_temp.read_intent(:'d1', array[:'sa']::uuid[])) as r1 \gset
select is((:'r1'::jsonb) ->> 'status', 'ok', 'set-up: the rotate job''s read of the new version for d1 works');
select is(pg_temp.listed(:'d1', :'sa'), 1,
  'R18 FINDING 1: a read outside its `secrets` step (here: the rotation job''s, during a `ready` step row left open) does not list it at the new version');
select is(pg_temp.listed(:'d2', :'sl'), 1, 'another secret of d2, not rotating: its current version');
-- once switched, both follow the current version
select public.secret_rotation_deployments__set_state(:'rot', :'d2', 'switched', null) is not null as x \gset
select is(pg_temp.listed(:'d2', :'sa'), 2, 'switched: the current version');
-- a leak response's switching row is listed at the new version whatever its provisioning (R11 finding 3)
select gen_random_uuid() as rotl \gset
select public.secret_rotations__start(:'rotl', :'sl', :'w2', pg_temp.fp(:'w2'), 0, true) is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rotl', :'d1', 'switching', null) is not null as x \gset
select is(pg_temp.listed(:'d1', :'sl'), 2, 'a leak response''s switching row: the new version (unchanged)');
select * from finish();
rollback;
