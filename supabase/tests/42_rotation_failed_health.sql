-- A rotation's `failed` record after the deployment's swap began (20261207090000_rotation_failed_health.sql,
-- review R16 finding 4): a swap that threw or was cut leaves the host on the old environment or the
-- new one, not known which; the binding is pinned to the old version. secret_rotation_deployments__set_state
-- now writes a `health` event for it (reason code `rotation_failed`, state `unknown`) and one webhook
-- delivery per active endpoint, in the record's transaction and before the deployment's `ready`;
-- a `failed` from `pending`, or of a deployment that no longer runs its agent, gets none.
-- Only set_state writes it: deployment_events__record_rotation_health refuses `rotation_failed`
-- (review R20 finding 2: a later call cannot tell a `failed` from `pending` from one after
-- `switching`), and its two codes refuse a failed row.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(25);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- privileges ------------------------------------------------------
select ok(not has_function_privilege(r, f, 'execute'), r || ' may not execute ' || f)
from unnest(array['anon', 'authenticated', 'service_role']) r,
     unnest(array['public.deployment_events__record_rotation_health(uuid, uuid, text)',
                  'public.secret_rotation_deployments__set_state(uuid, uuid, text, text, text, text, text, inet, text)']) f;
select ok(bool_and(has_function_privilege('cortex_orchestrator', f, 'execute')
                   and (select p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp'] from pg_proc p where p.oid = f::regprocedure)),
  'cortex_orchestrator may execute both; security definer, search_path pinned to pg_catalog, pg_temp')
from unnest(array['public.deployment_events__record_rotation_health(uuid, uuid, text)',
                  'public.secret_rotation_deployments__set_state(uuid, uuid, text, text, text, text, text, inet, text)']) f;

-- ---- fixtures ---------------------------------------------------------------------------------------
-- org A's secret s bound to: `dep` failed after switching (the case), `dep_p` failed from pending,
-- `dep_gone` failed after switching while deprovisioning, `dep_sw` switched plainly.
select public.organizations__create('R42 A') ->> 'id' as org \gset
select public.deployments__create(:'org', 'R42 1', 'r42a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org', 'R42 2', 'r42b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_p \gset
select public.deployments__create(:'org', 'R42 3', 'r42c-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_gone \gset
select public.deployments__create(:'org', 'R42 4', 'r42d-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_sw \gset
select 'canary-r42-' || md5(random()::text) as v \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v', pg_temp.fp(:'v')) ->> 'secret_id' as s \gset
select bool_and(public.deployment_secrets__bind(d, 'ANTHROPIC_API_KEY', :'s') is not null) as b
from unnest(array[:'dep', :'dep_p', :'dep_gone', :'dep_sw']::uuid[]) d \gset
update public.deployments set status = 'provisioning' where id in (:'dep', :'dep_p', :'dep_gone', :'dep_sw');
update public.deployments set status = 'ready' where id in (:'dep', :'dep_p', :'dep_gone', :'dep_sw');
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a1') ->> 'id' as ep1 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a2') ->> 'id' as ep2 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a3') ->> 'id' as ep3 \gset
select public.webhook_endpoints__disable(:'org', :'ep3') is not null as x \gset
select gen_random_uuid() as rot \gset
select 'canary-r42-new-' || md5(random()::text) as v_new \gset
set local role cortex_orchestrator;
select public.secret_rotations__start(:'rot', :'s', :'v_new', pg_temp.fp(:'v_new'), 3600, false, 'r42', 'rotate-r42',
  p_org_id => :'org') is not null as x \gset
select bool_and(public.secret_rotation_deployments__set_state(:'rot', d, 'switching', p_actor => 'r42', p_job_id => 'rotate-r42') is not null) as x
from unnest(array[:'dep', :'dep_gone', :'dep_sw']::uuid[]) d \gset
reset role;
update public.deployments set status = 'deprovisioning' where id = :'dep_gone';
set local role cortex_orchestrator;
select bool_and(public.secret_rotation_deployments__set_state(:'rot', d, 'failed', 'ssh_connect_failed',
  p_actor => 'r42', p_job_id => 'rotate-r42') is not null) as x
from unnest(array[:'dep', :'dep_p', :'dep_gone']::uuid[]) d \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_sw', 'switched', null, 'blue-green',
  p_actor => 'r42', p_job_id => 'rotate-r42') is not null as x \gset
reset role;

-- ---- the event set_state writes with the failed record ------------------------------------------------
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health'), 1::bigint,
  'a failed record after switching wrote one health event for the deployment');
select id as ev from public.deployment_events where deployment_id = :'dep' and kind = 'health' \gset
select is((select payload from public.deployment_events where id = :ev),
  jsonb_build_object('state', 'unknown', 'operation', 'rotate', 'reason_code', 'rotation_failed', 'rotation_id', :'rot'),
  'its payload: state unknown, operation rotate, reason code rotation_failed, the rotation id; no error text');
select ok(:ev < (select min(id) from public.deployment_events where deployment_id = :'dep' and kind = 'status'
                 and payload ->> 'status' = 'ready' and payload ->> 'previous_status' = 'rotating'),
  'written before the deployment''s `ready`, in the record''s transaction');
select is((select d.status from public.deployments d where d.id = :'dep'), 'ready', 'and the deployment is ready again');
select is((select version from public.deployment_secrets where deployment_id = :'dep' and secret_id = :'s'), 1,
  'the binding is pinned to the old version, as before');
select is((select state || ' ' || reason from public.secret_rotation_deployments where rotation_id = :'rot' and deployment_id = :'dep'),
  'failed ssh_connect_failed', 'the record keeps the error''s code as its reason');
select is((select array_agg(endpoint_id::text order by endpoint_id) from public.webhook_deliveries where event_id = :ev),
  (select array_agg(e order by e) from unnest(array[:'ep1', :'ep2']) e),
  'one delivery per ACTIVE endpoint of the organisation (not the disabled one)');

-- a repeated record (a lost answer) writes nothing
set local role cortex_orchestrator;
select public.secret_rotation_deployments__set_state(:'rot', :'dep', 'failed', 'ssh_connect_failed',
  p_actor => 'r42', p_job_id => 'rotate-r42') is not null as x \gset
reset role;
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health')
          || ' ' || (select count(*) from public.webhook_deliveries where event_id = :ev),
  '1 2', 'a repeated failed record writes no second event nor delivery');

-- ---- what makes none, and refusals ----------------------------------------------------------------------
select is((select count(*) from public.deployment_events where deployment_id = :'dep_p' and kind = 'health'), 0::bigint,
  'a failed from pending (no swap began) records no event');
select is((select count(*) from public.deployment_events where deployment_id = :'dep_gone' and kind = 'health'), 0::bigint,
  'nor a failed after switching of a deployment that no longer runs its agent (deprovisioning)');
select is((select count(*) from public.deployment_events where deployment_id = :'dep_sw' and kind = 'health'), 0::bigint,
  'nor a plain switch');
set local role cortex_orchestrator;
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_p', :'rot', 'rotation_failed'),
  '22023', 'reason_code: must be rollback_unverified or switch_unverified',
  'rotation_failed is not for a direct call: refused for a row failed from pending (which set_state gave none)');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', :'rot', 'rotation_failed'),
  '22023', 'reason_code: must be rollback_unverified or switch_unverified',
  'and for the row set_state gave one');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', :'rot', 'rollback_unverified'),
  '22023', null, 'a failed row is refused for rollback_unverified');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', :'rot', 'switch_unverified'),
  '22023', null, 'and for switch_unverified');
reset role;
select is((select array_agg(deployment_id::text) from public.deployment_events where kind = 'health'
           and deployment_id in (:'dep', :'dep_p', :'dep_gone', :'dep_sw')),
  array[:'dep'], 'no refused call wrote an event: only dep''s (its set_state''s)');
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health'), 1::bigint,
  'still one for dep');
select is((select count(*) from public.webhook_deliveries where endpoint_id = :'ep3'), 0::bigint,
  'the disabled endpoint got nothing');

select * from finish();
rollback;
