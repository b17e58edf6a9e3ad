-- A rotation that found the host already serving the new key and could verify neither it nor the
-- swap back (20261206100000_rotation_switch_unverified.sql, review R14 finding 4): the rotation job
-- records the deployment `switched` with reason `unhealthy_switch_unverified` (the host runs the
-- new version, maybe not serving). secret_rotation_deployments__set_state writes a `health` event
-- (reason code `switch_unverified`) and one webhook delivery per active endpoint in the same
-- transaction, before the deployment's `ready`; deployment_events__record_rotation_health (the
-- job's follow-up call) finds it, and records one only for a row the rotation recorded so. The
-- rollback's event (36_rotation_health_events.sql) is unchanged: a few checks of it at the end.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(37);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- privileges (re-stated by the migration) ------------------------------------------------------
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
-- org A's secret s bound to: `dep` switched unverified (the case), `dep_sw` switched plainly,
-- `dep_swr` switched with the ROLLBACK's reason (a forged record: the job never writes it so),
-- `dep_rb` rolled back unverified (the twin), `dep_gone` switched unverified while deprovisioning.
-- Org B's `dep_b` gets a switched-unverified row in org A's rotation by hand.
select public.organizations__create('R38 A') ->> 'id' as org \gset
select public.organizations__create('R38 B') ->> 'id' as org_b \gset
select public.deployments__create(:'org', 'R38 1', 'r38a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org', 'R38 2', 'r38b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_sw \gset
select public.deployments__create(:'org', 'R38 3', 'r38c-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_swr \gset
select public.deployments__create(:'org', 'R38 4', 'r38d-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_rb \gset
select public.deployments__create(:'org', 'R38 5', 'r38e-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_gone \gset
select public.deployments__create(:'org', 'R38 6', 'r38f-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_late \gset
select public.deployments__create(:'org_b', 'R38 B', 'r38g-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_b \gset
select 'canary-r38-' || md5(random()::text) as v \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v', pg_temp.fp(:'v')) ->> 'secret_id' as s \gset
select bool_and(public.deployment_secrets__bind(d, 'ANTHROPIC_API_KEY', :'s') is not null) as b
from unnest(array[:'dep', :'dep_sw', :'dep_swr', :'dep_rb', :'dep_gone', :'dep_late']::uuid[]) d \gset
update public.deployments set status = 'provisioning'
where id in (:'dep', :'dep_sw', :'dep_swr', :'dep_rb', :'dep_gone', :'dep_late', :'dep_b');
update public.deployments set status = 'ready'
where id in (:'dep', :'dep_sw', :'dep_swr', :'dep_rb', :'dep_gone', :'dep_late', :'dep_b');
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a1') ->> 'id' as ep1 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a2') ->> 'id' as ep2 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a3') ->> 'id' as ep3 \gset
select public.webhook_endpoints__disable(:'org', :'ep3') is not null as x \gset
select public.webhook_endpoints__create(:'org_b', 'https://hooks.example.net/b') ->> 'id' as ep_b \gset
select gen_random_uuid() as rot \gset
select 'canary-r38-new-' || md5(random()::text) as v_new \gset
set local role cortex_orchestrator;
select public.secret_rotations__start(:'rot', :'s', :'v_new', pg_temp.fp(:'v_new'), 3600, false, 'r38', 'rotate-r38',
  p_org_id => :'org') is not null as x \gset
select bool_and(public.secret_rotation_deployments__set_state(:'rot', d, 'switching', p_actor => 'r38', p_job_id => 'rotate-r38') is not null) as x
from unnest(array[:'dep', :'dep_sw', :'dep_swr', :'dep_rb', :'dep_gone']::uuid[]) d \gset
reset role;
update public.deployments set status = 'deprovisioning' where id = :'dep_gone';
set local role cortex_orchestrator;
select bool_and(public.secret_rotation_deployments__set_state(:'rot', d, 'switched', 'unhealthy_switch_unverified', 'blue-green',
  p_actor => 'r38', p_job_id => 'rotate-r38') is not null) as x
from unnest(array[:'dep', :'dep_gone']::uuid[]) d \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_sw', 'switched', null, 'blue-green',
  p_actor => 'r38', p_job_id => 'rotate-r38') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_swr', 'switched', 'unhealthy_rollback_unverified', 'blue-green',
  p_actor => 'r38', p_job_id => 'rotate-r38') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_rb', 'rolled_back', 'unhealthy_rollback_unverified', 'blue-green',
  p_actor => 'r38', p_job_id => 'rotate-r38') is not null as x \gset
reset role;
insert into public.secret_rotation_deployments (rotation_id, deployment_id, from_version, state, reason)
values (:'rot', :'dep_b', 1, 'switched', 'unhealthy_switch_unverified');

-- ---- the event set_state writes with the switched record ---------------------------------------------
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health'), 1::bigint,
  'the switched (unhealthy_switch_unverified) record wrote one health event for the deployment');
select id as ev from public.deployment_events where deployment_id = :'dep' and kind = 'health' \gset
select is((select payload from public.deployment_events where id = :ev),
  jsonb_build_object('state', 'unhealthy', 'operation', 'rotate', 'reason_code', 'switch_unverified', 'rotation_id', :'rot'),
  'its payload: state unhealthy, operation rotate, reason code switch_unverified, the rotation id; nothing else');
select is((select org_id::text from public.deployment_events where id = :ev), :'org', 'of the deployment''s organisation');
select ok(:ev < (select min(id) from public.deployment_events where deployment_id = :'dep' and kind = 'status'
                 and payload ->> 'status' = 'ready' and payload ->> 'previous_status' = 'rotating'),
  'written before the deployment''s `ready` (a stream ends at that ready), in the record''s transaction');
select is((select d.status from public.deployments d where d.id = :'dep'), 'ready', 'and the deployment is ready again');
select is((select version from public.deployment_secrets where deployment_id = :'dep' and secret_id = :'s'), null::integer,
  'the binding follows the new version (switched), as before');
select is((select array_agg(endpoint_id::text order by endpoint_id) from public.webhook_deliveries where event_id = :ev),
  (select array_agg(e order by e) from unnest(array[:'ep1', :'ep2']) e),
  'one delivery per ACTIVE endpoint of the organisation (not the disabled one, not another org''s)');
select is((select array_agg(distinct state || ' ' || org_id) from public.webhook_deliveries where event_id = :ev),
  array['pending ' || :'org'], 'pending, for the dispatcher, in the organisation''s name');

-- the job's follow-up call finds it; a repeat writes nothing
set local role cortex_orchestrator;
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'switch_unverified') as first \gset
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'switch_unverified') as again \gset
reset role;
select is((:'first'::jsonb) ->> 'existing' || ' ' || ((:'first'::jsonb) ->> 'id'), 'true ' || :ev,
  'the job''s call (switch_unverified) finds the event set_state wrote');
select is((:'again'::jsonb) ->> 'existing' || ' ' || ((:'again'::jsonb) ->> 'id'), 'true ' || :ev, 'and so does a repeat');
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health')
          || ' ' || (select count(*) from public.webhook_deliveries where event_id = :ev),
  '1 2', 'still one health event and two deliveries');
-- a retry of the record itself (a lost answer) writes nothing either
set local role cortex_orchestrator;
select public.secret_rotation_deployments__set_state(:'rot', :'dep', 'switched', 'unhealthy_switch_unverified', 'blue-green',
  p_actor => 'r38', p_job_id => 'rotate-r38') is not null as x \gset
reset role;
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health'), 1::bigint,
  'a repeated switched record writes no second event');

-- ---- what makes none, and refusals ----------------------------------------------------------------------
select is((select count(*) from public.deployment_events where deployment_id in (:'dep_sw', :'dep_swr') and kind = 'health'), 0::bigint,
  'a plain switch, and a switch with another reason (even the rollback''s), record no event');
select is((select count(*) from public.deployment_events where deployment_id = :'dep_gone' and kind = 'health'), 0::bigint,
  'nor a switch unverified of a deployment that no longer runs its agent (deprovisioning)');
set local role cortex_orchestrator;
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_sw', :'rot', 'switch_unverified'),
  '22023', null, 'a switched row without the reason unhealthy_switch_unverified is refused');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_swr', :'rot', 'switch_unverified'),
  '22023', null, 'a switched row with the rollback''s reason is refused for switch_unverified');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_swr', :'rot', 'rollback_unverified'),
  '22023', null, 'and for rollback_unverified (not rolled back)');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_rb', :'rot', 'switch_unverified'),
  '22023', null, 'a rolled_back (unverified) row is refused for switch_unverified, though its own event exists');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', :'rot', 'rollback_unverified'),
  '22023', null, 'a switched (unverified) row is refused for rollback_unverified, though its own event exists');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep', :'rot', 'switched_unverified'),
  '22023', 'reason_code: must be rollback_unverified or switch_unverified', 'an unknown reason code is refused, naming the allow-list');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_gone', :'rot', 'switch_unverified'),
  '22023', null, 'a deployment that no longer runs its agent gets no new event');
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_b', :'rot', 'switch_unverified'),
  '22023', null, 'a rotation of another organisation is refused (even with the row switched unverified)');
reset role;
-- a finished rotation's row (dep_late, left pending above, set switched unverified BY HAND: no
-- event, as set_state writes none without its event) makes no NEW event (review R13 finding 3),
-- while the one set_state wrote is still found (review R14 finding 2)
update public.secret_rotation_deployments set state = 'switched', reason = 'unhealthy_switch_unverified'
where rotation_id = :'rot' and deployment_id = :'dep_late';
set local role cortex_orchestrator;
select public.secret_rotations__finish(:'rot', 'r38', 'rotate-r38') is not null as x \gset
select throws_ok(format('select public.deployment_events__record_rotation_health(%L, %L, %L)', :'dep_late', :'rot', 'switch_unverified'),
  '22023', null, 'a finished rotation''s switched-unverified row with no event makes no new one');
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'switch_unverified') as late \gset
reset role;
select is((:'late'::jsonb) ->> 'existing' || ' ' || ((:'late'::jsonb) ->> 'id'), 'true ' || :ev,
  'while the event set_state wrote is still found after the rotation finished');
select is((select array_agg(deployment_id::text order by deployment_id) from public.deployment_events where kind = 'health'
           and deployment_id in (:'dep', :'dep_sw', :'dep_swr', :'dep_rb', :'dep_gone', :'dep_late', :'dep_b')),
  (select array_agg(d order by d) from unnest(array[:'dep', :'dep_rb']) d),
  'no refused call wrote an event: only dep''s and dep_rb''s (their set_state''s)');
select is((select count(*) from public.webhook_deliveries where endpoint_id in (:'ep3', :'ep_b')), 0::bigint,
  'the disabled endpoint and the other organisation''s got nothing');

-- ---- the rollback's event, unchanged ---------------------------------------------------------------------
select is((select payload from public.deployment_events where deployment_id = :'dep_rb' and kind = 'health'),
  jsonb_build_object('state', 'unhealthy', 'operation', 'rotate', 'reason_code', 'rollback_unverified', 'rotation_id', :'rot'),
  'a rolled_back (unhealthy_rollback_unverified) record still writes its event, reason code rollback_unverified');
select ok((select min(id) from public.deployment_events where deployment_id = :'dep_rb' and kind = 'health')
  < (select min(id) from public.deployment_events where deployment_id = :'dep_rb' and kind = 'status'
     and payload ->> 'status' = 'ready' and payload ->> 'previous_status' = 'rotating'),
  'still before the deployment''s `ready`');
select is((select version from public.deployment_secrets where deployment_id = :'dep_rb' and secret_id = :'s'), 1,
  'and the rolled-back binding is still pinned to the old version');
set local role cortex_orchestrator;
select public.deployment_events__record_rotation_health(:'dep_rb', :'rot', 'rollback_unverified') as rb \gset
reset role;
select is((:'rb'::jsonb) ->> 'existing' || ' ' || ((:'rb'::jsonb) #>> '{payload,reason_code}'), 'true rollback_unverified',
  'and the job''s rollback_unverified call finds it');

select * from finish();
rollback;
