-- A rotation whose rollback is not verified (20261205120000_rotation_health_events.sql): a
-- deployment the rotation job recorded `rolled_back` with reason `unhealthy_rollback_unverified`
-- (routed back, but its old instance did not answer through Caddy) gets a `health` event and one
-- webhook delivery per active endpoint of its organisation, once per (rotation, deployment); only
-- cortex_orchestrator may record one, only for a deployment that a rotation of its own
-- organisation already recorded so, with a reason code from the allow-list, while it runs its agent.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(43);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- privileges -------------------------------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.deployment_events__record_rotation_health(uuid, uuid, text)', 'execute'),
  r || ' may not record a rotation health event')
from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(has_function_privilege('cortex_orchestrator', 'public.deployment_events__record_rotation_health(uuid, uuid, text)', 'execute'),
  'cortex_orchestrator may record a rotation health event');
select ok((select p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp'] from pg_proc p
           where p.oid = 'public.deployment_events__record_rotation_health(uuid, uuid, text)'::regprocedure),
  'security definer, search_path pinned to pg_catalog, pg_temp');
set local role authenticated;
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', gen_random_uuid(), gen_random_uuid(), 'rollback_unverified'),
  '42501', null, 'authenticated: permission denied');
reset role;
set local role service_role;
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', gen_random_uuid(), gen_random_uuid(), 'rollback_unverified'),
  '42501', null, 'service_role: permission denied');
reset role;

-- ---- fixtures ---------------------------------------------------------------------------------------
-- org A's secret s bound to five deployments: `dep` rolled back unverified, `dep_clean` rolled back
-- healthy (reason `unhealthy`), `dep_sw` switched, `dep_pend` left pending, `dep_gone` rolled back
-- unverified and then deprovisioning, `dep_fail` recorded `failed` with the unverified reason (a
-- forged record: the job never writes it so); `dep_none` is bound to another secret only. Org B's `dep_b`
-- gets a row in org A's rotation by hand (no function allows it), so that its refusal is the
-- organisation check and nothing else.
select public.organizations__create('R36 A') ->> 'id' as org \gset
select public.organizations__create('R36 B') ->> 'id' as org_b \gset
select public.deployments__create(:'org', 'R36 1', 'r36a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org', 'R36 2', 'r36b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_clean \gset
select public.deployments__create(:'org', 'R36 3', 'r36c-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_sw \gset
select public.deployments__create(:'org', 'R36 4', 'r36d-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_pend \gset
select public.deployments__create(:'org', 'R36 5', 'r36e-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_gone \gset
select public.deployments__create(:'org', 'R36 6', 'r36f-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_none \gset
select public.deployments__create(:'org', 'R36 7', 'r36h-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_fail \gset
select public.deployments__create(:'org_b', 'R36 B', 'r36g-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_b \gset
select 'canary-r36-' || md5(random()::text) as v \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v', pg_temp.fp(:'v')) ->> 'secret_id' as s \gset
select public.secrets__create(:'org', 'openai', 'openai', :'v' || 'o', pg_temp.fp(:'v' || 'o')) ->> 'secret_id' as s2 \gset
select bool_and(public.deployment_secrets__bind(d, 'ANTHROPIC_API_KEY', :'s') is not null) as b
from unnest(array[:'dep', :'dep_clean', :'dep_sw', :'dep_pend', :'dep_gone', :'dep_fail']::uuid[]) d \gset
select bool_and(public.deployment_secrets__bind(d, 'OPENAI_API_KEY', :'s2') is not null) as b
from unnest(array[:'dep', :'dep_none']::uuid[]) d \gset
update public.deployments set status = 'provisioning'
where id in (:'dep', :'dep_clean', :'dep_sw', :'dep_pend', :'dep_gone', :'dep_none', :'dep_fail', :'dep_b');
update public.deployments set status = 'ready'
where id in (:'dep', :'dep_clean', :'dep_sw', :'dep_pend', :'dep_gone', :'dep_none', :'dep_fail', :'dep_b');
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a1') ->> 'id' as ep1 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a2') ->> 'id' as ep2 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a3') ->> 'id' as ep3 \gset
select public.webhook_endpoints__disable(:'org', :'ep3') is not null as x \gset
select public.webhook_endpoints__create(:'org_b', 'https://hooks.example.net/b') ->> 'id' as ep_b \gset
select gen_random_uuid() as rot \gset
select gen_random_uuid() as rot2 \gset
select 'canary-r36-new-' || md5(random()::text) as v_new \gset
set local role cortex_orchestrator;
select public.secret_rotations__start(:'rot', :'s', :'v_new', pg_temp.fp(:'v_new'), 3600, false, 'r36', 'rotate-r36',
  p_org_id => :'org') is not null as x \gset
select public.secret_rotations__start(:'rot2', :'s2', :'v_new' || 'o', pg_temp.fp(:'v_new' || 'o'), 3600, false, 'r36', 'rotate-r36b',
  p_org_id => :'org') is not null as x \gset
select bool_and(public.secret_rotation_deployments__set_state(:'rot', d, 'switching', p_actor => 'r36', p_job_id => 'rotate-r36') is not null) as x
from unnest(array[:'dep', :'dep_clean', :'dep_sw', :'dep_gone', :'dep_fail']::uuid[]) d \gset
select bool_and(public.secret_rotation_deployments__set_state(:'rot', d, 'rolled_back', 'unhealthy_rollback_unverified', 'blue-green',
  p_actor => 'r36', p_job_id => 'rotate-r36') is not null) as x
from unnest(array[:'dep', :'dep_gone']::uuid[]) d \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_clean', 'rolled_back', 'unhealthy', 'blue-green',
  p_actor => 'r36', p_job_id => 'rotate-r36') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_sw', 'switched', null, 'blue-green',
  p_actor => 'r36', p_job_id => 'rotate-r36') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_fail', 'failed', 'unhealthy_rollback_unverified', null,
  p_actor => 'r36', p_job_id => 'rotate-r36') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot2', :'dep', 'switching', p_actor => 'r36', p_job_id => 'rotate-r36b') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot2', :'dep', 'rolled_back', 'unhealthy_rollback_unverified', 'held-restart',
  p_actor => 'r36', p_job_id => 'rotate-r36b') is not null as x \gset
reset role;
insert into public.secret_rotation_deployments (rotation_id, deployment_id, from_version, state, reason)
values (:'rot', :'dep_b', 1, 'rolled_back', 'unhealthy_rollback_unverified');
update public.deployments set status = 'deprovisioning' where id = :'dep_gone';
select is((select array_agg(d.status order by d.status) from public.deployments d where d.id in (:'dep', :'dep_clean', :'dep_gone')),
  array['deprovisioning', 'ready', 'ready'], 'fixtures: the rolled-back deployments are ready again (set_state), dep_gone deprovisioning');

-- ---- the event and its deliveries ------------------------------------------------------------------
set local role cortex_orchestrator;
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'rollback_unverified') as first \gset
reset role;
select is((:'first'::jsonb) ->> 'existing', 'true',
  'set_state recorded it already, with the rolled_back record (20261205130000): the job''s own call finds it');
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health'
           and payload ->> 'rotation_id' = :'rot'), 1::bigint, 'one event of this rotation for the deployment');
select ok((select min(id) from public.deployment_events where deployment_id = :'dep' and kind = 'health' and payload ->> 'rotation_id' = :'rot')
  < (select min(id) from public.deployment_events where deployment_id = :'dep' and kind = 'status'
     and payload ->> 'status' = 'ready' and payload ->> 'previous_status' = 'rotating'),
  'R13 FINDING 1: the event comes before the `ready` status event of the rollback (a stream ends at that ready)');
select is((select count(*) from public.deployment_events where deployment_id = :'dep_clean' and kind = 'health'), 0::bigint,
  'a verified rollback (reason unhealthy) records none');
select is((select kind || ' ' || org_id from public.deployment_events where id = ((:'first'::jsonb) ->> 'id')::bigint),
  'health ' || :'org', 'one `health` event, of the deployment''s organisation');
select is((select payload from public.deployment_events where id = ((:'first'::jsonb) ->> 'id')::bigint),
  jsonb_build_object('state', 'unhealthy', 'operation', 'rotate', 'reason_code', 'rollback_unverified', 'rotation_id', :'rot'),
  'its payload: state, operation, reason code and rotation id only');
select is((:'first'::jsonb) -> 'payload', (select payload from public.deployment_events where id = ((:'first'::jsonb) ->> 'id')::bigint),
  'the answer is the event as deployment_events__json shows it');
select is((select array_agg(endpoint_id::text order by endpoint_id) from public.webhook_deliveries
           where event_id = ((:'first'::jsonb) ->> 'id')::bigint),
  (select array_agg(e order by e) from unnest(array[:'ep1', :'ep2']) e),
  'one delivery per ACTIVE endpoint of the organisation (not the removed one, not another org''s)');
select is((select array_agg(distinct state || ' ' || org_id) from public.webhook_deliveries
           where event_id = ((:'first'::jsonb) ->> 'id')::bigint),
  array['pending ' || :'org'], 'pending, for the dispatcher, in the organisation''s name');
select min(id) as delivery from public.webhook_deliveries where event_id = ((:'first'::jsonb) ->> 'id')::bigint \gset
set local role cortex_orchestrator;
select public.webhook_deliveries__begin(:delivery) as plan \gset
select public.deployment_events__list(:'dep', 0, 1000) as listed \gset
reset role;
select is((:'plan'::jsonb) #>> '{event,kind}', 'health', 'the delivery worker gets the health event to send');
select ok(exists (select 1 from jsonb_array_elements((:'listed'::jsonb) -> 'events') e where e ->> 'kind' = 'health'),
  'and the event stream lists it (deployment_events__list)');

-- a repeat: the same event, no second delivery
set local role cortex_orchestrator;
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'rollback_unverified') as again \gset
reset role;
select is((:'again'::jsonb) ->> 'existing', 'true', 'a second call for the same (rotation, deployment) says existing');
select is((:'again'::jsonb) ->> 'id', (:'first'::jsonb) ->> 'id', 'and returns the first event');
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health' and payload ->> 'rotation_id' = :'rot')
          || ' ' || (select count(*) from public.webhook_deliveries w join public.deployment_events e on e.id = w.event_id
                     where e.deployment_id = :'dep' and e.kind = 'health' and e.payload ->> 'rotation_id' = :'rot'),
  '1 2', 'idempotent: still one health event of the rotation and two deliveries');

-- another rotation (of another secret) that rolled the same deployment back unverified records its
-- own, also while the deployment shows `rotating` (another operation's swap)
update public.deployments set status = 'rotating' where id = :'dep';
set local role cortex_orchestrator;
select public.deployment_events__record_rotation_health(:'dep', :'rot2', 'rollback_unverified') as other \gset
reset role;
select is((:'other'::jsonb) ->> 'existing' || ' ' || ((:'other'::jsonb) #>> '{payload,rotation_id}'), 'true ' || :'rot2',
  'idempotence is per rotation: another rotation has its own event (its set_state wrote it), found while the deployment is rotating');
update public.deployments set status = 'ready' where id = :'dep';

-- ---- refusals ------------------------------------------------------------------------------------------
set local role cortex_orchestrator;
select throws_ok(format('select public.deployment_events__record_rotation_health(null, %L, %L)', :'rot', 'rollback_unverified'),
  '22023', 'deployment_id: is required', 'a null deployment is refused, naming the field');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, null, %L)', :'dep', 'rollback_unverified'),
  '22023', 'rotation_id: is required', 'a null rotation is refused, naming the field');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, null)', :'dep', :'rot'),
  '22023', 'reason_code: is required', 'a null reason code is refused, naming the field');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', :'rot', 'kept_unhealthy'),
  '22023', 'reason_code: must be rollback_unverified or switch_unverified', 'a reason code off the allow-list is refused (even the revoke''s)');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', :'rot',
  'rollback_unverified: agent at 203.0.113.9 said ' || :'v'), '22023', 'reason_code: must be rollback_unverified or switch_unverified',
  'free text is refused (org members read events; webhooks send them out)');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', gen_random_uuid(), :'rot', 'rollback_unverified'),
  'P0002', null, 'an unknown deployment is not found');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', gen_random_uuid(), 'rollback_unverified'),
  '22023', null, 'a made-up rotation is refused');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_b', :'rot', 'rollback_unverified'),
  '22023', null, 'a rotation of another organisation is refused (even with the deployment''s row rolled back unverified)');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_none', :'rot', 'rollback_unverified'),
  '22023', null, 'a deployment that is not part of the rotation is refused');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_pend', :'rot', 'rollback_unverified'),
  '22023', null, 'a deployment the rotation has not moved yet (pending) is refused');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_sw', :'rot', 'rollback_unverified'),
  '22023', null, 'a deployment the rotation switched is refused');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_clean', :'rot', 'rollback_unverified'),
  '22023', null, 'a deployment rolled back with another reason (a verified rollback) is refused');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_fail', :'rot', 'rollback_unverified'),
  '22023', null, 'a deployment recorded failed (not rolled back), even with the unverified reason, is refused');
reset role;
-- dep_gone2: rolled back unverified with no event yet (a row put in by hand), then deprovisioning
select public.deployments__create(:'org', 'R36 9', 'r36j-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_gone2 \gset
select public.deployment_secrets__bind(:'dep_gone2', 'ANTHROPIC_API_KEY', :'s') is not null as b \gset
update public.deployments set status = 'provisioning' where id = :'dep_gone2';
update public.deployments set status = 'ready' where id = :'dep_gone2';
insert into public.secret_rotation_deployments (rotation_id, deployment_id, from_version, state, reason)
values (:'rot', :'dep_gone2', 1, 'rolled_back', 'unhealthy_rollback_unverified');
update public.deployments set status = 'deprovisioning' where id = :'dep_gone2';
set local role cortex_orchestrator;
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_gone2', :'rot', 'rollback_unverified'),
  '22023', null, 'a deployment that no longer runs its agent (deprovisioning) gets no new event');
reset role;
-- (dep_fail's is its set_state's too: since 20261207090000 a `failed` after `switching` writes a
-- `rotation_failed` event, 42_rotation_failed_health.sql; not a rollback_unverified one)
select is((select array_agg(deployment_id::text || ' ' || (payload ->> 'reason_code') order by deployment_id::text)
           from public.deployment_events where kind = 'health' and deployment_id <> :'dep'),
  (select array_agg(x order by x) from unnest(array[:'dep_gone' || ' rollback_unverified', :'dep_fail' || ' rotation_failed']) x),
  'no refused call wrote an event (dep_gone''s and dep_fail''s are their set_state''s, written while they still ran their agent)');
-- R13 finding 3: once the rotation has finished, its rows no longer make NEW events. dep_late's row
-- (rolled back unverified, no event: put in by hand, as no function writes one without its event)
select public.deployments__create(:'org', 'R36 8', 'r36i-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_late \gset
select public.deployment_secrets__bind(:'dep_late', 'ANTHROPIC_API_KEY', :'s') is not null as b \gset
update public.deployments set status = 'provisioning' where id = :'dep_late';
update public.deployments set status = 'ready' where id = :'dep_late';
insert into public.secret_rotation_deployments (rotation_id, deployment_id, from_version, state, reason)
values (:'rot', :'dep_late', 1, 'rolled_back', 'unhealthy_rollback_unverified');
update public.secret_rotation_deployments set state = 'failed' where rotation_id = :'rot' and deployment_id = :'dep_pend';
set local role cortex_orchestrator;
select public.secret_rotations__finish(:'rot', 'r36', 'rotate-r36') is not null as x \gset
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_late', :'rot', 'rollback_unverified'),
  '22023', null, 'R13 FINDING 3: a finished rotation makes no new event (an old row cannot send a fresh webhook)');
-- R14 finding 2: but an event it made is still found (existing), whatever happened since
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'rollback_unverified') as late \gset
select public.deployment_events__record_rotation_health(:'dep_gone', :'rot', 'rollback_unverified') as gone \gset
reset role;
select is((:'late'::jsonb) ->> 'existing' || ' ' || ((:'late'::jsonb) ->> 'id'), 'true ' || ((:'first'::jsonb) ->> 'id'),
  'R14 FINDING 2: the job''s late call after the rotation finished finds the event set_state wrote (no false failure)');
select is((:'gone'::jsonb) ->> 'existing', 'true',
  'and so does one for a deployment deprovisioned since (its event was written while it ran its agent)');
select is((select count(*) from public.deployment_events where kind = 'health' and deployment_id = :'dep_late'), 0::bigint,
  'nothing was written for the refused one');
select is((select count(*) from public.webhook_deliveries where endpoint_id = :'ep_b'), 0::bigint,
  'and the other organisation''s endpoint got nothing');

select * from finish();
rollback;
