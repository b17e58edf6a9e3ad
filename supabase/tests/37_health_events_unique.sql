-- Review R12 finding 4 (issue 11; 20261206090000_health_events_unique.sql, 20261206090050,
-- 20261206090100_health_events_on_conflict.sql): one `health` event per (deployment, revocation)
-- and per (deployment, rotation) is a unique index now, not only the functions' look-up (which
-- holds under READ COMMITTED only). Here, in one session: the indexes, what they refuse and allow,
-- and that the functions meet a conflict with no second event and no second delivery. Two
-- REPEATABLE READ sessions: test/integration/health-events-unique.test.ts.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(23);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- the indexes ------------------------------------------------------------------------------------
select ok((select i.indisunique and i.indisvalid and i.indisready and i.indrelid = 'public.deployment_events'::regclass
           from pg_index i where i.indexrelid = 'public.deployment_events_health_revocation_key'::regclass),
  'a valid unique index on deployment_events per (deployment, revocation)');
select ok((select i.indisunique and i.indisvalid and i.indisready and i.indrelid = 'public.deployment_events'::regclass
           from pg_index i where i.indexrelid = 'public.deployment_events_health_rotation_key'::regclass),
  'a valid unique index on deployment_events per (deployment, rotation)');
select is(pg_get_indexdef('public.deployment_events_health_revocation_key'::regclass),
  'CREATE UNIQUE INDEX deployment_events_health_revocation_key ON public.deployment_events USING btree (deployment_id, ((payload ->> ''revocation_id''::text))) WHERE ((kind = ''health''::text) AND ((payload ->> ''revocation_id''::text) IS NOT NULL))',
  'keyed on the deployment and the payload''s revocation_id, health events only');
select is(pg_get_indexdef('public.deployment_events_health_rotation_key'::regclass),
  'CREATE UNIQUE INDEX deployment_events_health_rotation_key ON public.deployment_events USING btree (deployment_id, ((payload ->> ''rotation_id''::text))) WHERE ((kind = ''health''::text) AND ((payload ->> ''rotation_id''::text) IS NOT NULL))',
  'keyed on the deployment and the payload''s rotation_id, health events only');

-- ---- fixtures ---------------------------------------------------------------------------------------
-- org A's secret s bound to dep and dep2 (ready), two active endpoints and a disabled one; an open
-- revocation of s; a running rotation of s2 whose row of dep is set rolled_back unverified BY HAND
-- (set_state would record the event itself), so that the event is still to be recorded.
select public.organizations__create('R37 A') ->> 'id' as org \gset
select public.deployments__create(:'org', 'R37 1', 'r37a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org', 'R37 2', 'r37b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep2 \gset
select 'canary-r37-' || md5(random()::text) as v \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v', pg_temp.fp(:'v')) ->> 'secret_id' as s \gset
select public.secrets__create(:'org', 'openai', 'openai', :'v' || 'o', pg_temp.fp(:'v' || 'o')) ->> 'secret_id' as s2 \gset
select bool_and(public.deployment_secrets__bind(d, 'ANTHROPIC_API_KEY', :'s') is not null
                and public.deployment_secrets__bind(d, 'OPENAI_API_KEY', :'s2') is not null) as b
from unnest(array[:'dep', :'dep2']::uuid[]) d \gset
update public.deployments set status = 'provisioning' where id in (:'dep', :'dep2');
update public.deployments set status = 'ready' where id in (:'dep', :'dep2');
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a1') ->> 'id' as ep1 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a2') ->> 'id' as ep2 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a3') ->> 'id' as ep3 \gset
select public.webhook_endpoints__disable(:'org', :'ep3') is not null as x \gset
select gen_random_uuid() as rot \gset
select 'canary-r37-new-' || md5(random()::text) as v_new \gset
set local role cortex_orchestrator;
select public.secrets__request_revoke(:'s', null, null, 'token:t') ->> 'revocation_id' as rev \gset
select public.secret_rotations__start(:'rot', :'s2', :'v_new', pg_temp.fp(:'v_new'), 3600, false, 'r37', 'rotate-r37',
  p_org_id => :'org') is not null as x \gset
reset role;
update public.secret_rotation_deployments set state = 'rolled_back', reason = 'unhealthy_rollback_unverified'
where rotation_id = :'rot' and deployment_id in (:'dep', :'dep2');

-- ---- the functions, once each -----------------------------------------------------------------------
set local role cortex_orchestrator;
select public.deployment_events__record_health(:'dep', :'rev', 'kept_unhealthy') as rev1 \gset
select public.deployment_events__record_health(:'dep', :'rev', 'kept_unhealthy') as rev2 \gset
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'rollback_unverified') as rot1 \gset
select public.deployment_events__record_rotation_health(:'dep', :'rot', 'rollback_unverified') as rot2 \gset
reset role;
select is(array[(:'rev1'::jsonb) ->> 'existing', (:'rev2'::jsonb) ->> 'existing'], array['false', 'true'],
  'record_health: a new event, then the same one (existing)');
select is((:'rev2'::jsonb) ->> 'id', (:'rev1'::jsonb) ->> 'id', 'record_health: the repeat returns the first event');
select is(array[(:'rot1'::jsonb) ->> 'existing', (:'rot2'::jsonb) ->> 'existing'], array['false', 'true'],
  'record_rotation_health: a new event, then the same one (existing)');
select is((:'rot2'::jsonb) ->> 'id', (:'rot1'::jsonb) ->> 'id', 'record_rotation_health: the repeat returns the first event');
select is((select count(*) from public.webhook_deliveries
           where event_id in (((:'rev1'::jsonb) ->> 'id')::bigint, ((:'rot1'::jsonb) ->> 'id')::bigint)), 4::bigint,
  'one delivery per active endpoint for each event (2 + 2)');

-- ---- what the indexes refuse and allow (written as the table's owner: no function writes so) ----------
select throws_ok(format($q$insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (%L, %L, 'health', jsonb_build_object('state', 'unhealthy', 'operation', 'revoke', 'reason_code', 'kept_unhealthy', 'revocation_id', %L))$q$,
  :'dep', :'org', :'rev'),
  '23505', null, 'a second health event of the same (deployment, revocation): unique violation');
select throws_ok(format($q$insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (%L, %L, 'health', jsonb_build_object('state', 'unhealthy', 'operation', 'rotate', 'reason_code', 'rollback_unverified', 'rotation_id', %L))$q$,
  :'dep', :'org', :'rot'),
  '23505', null, 'a second health event of the same (deployment, rotation): unique violation');
select lives_ok(format($q$insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (%L, %L, 'health', jsonb_build_object('state', 'unhealthy', 'operation', 'revoke', 'reason_code', 'kept_unhealthy', 'revocation_id', gen_random_uuid()))$q$,
  :'dep', :'org'),
  'another revocation of the same deployment: allowed');
select lives_ok(format($q$insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (%L, %L, 'health', jsonb_build_object('state', 'unhealthy', 'operation', 'revoke', 'reason_code', 'kept_unhealthy', 'revocation_id', %L))$q$,
  :'dep2', :'org', :'rev'),
  'the same revocation for another deployment: allowed');
select lives_ok(format($q$insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (%L, %L, 'status', jsonb_build_object('status', 'ready', 'previous_status', 'rotating', 'rotation_id', %L, 'revocation_id', %L))$q$,
  :'dep', :'org', :'rot', :'rev'),
  'an event of another kind with the same keys: not a health event, not restricted');

-- ---- append_health meets a conflict: nothing written, no delivery --------------------------------------
select count(*) as n_events from public.deployment_events where deployment_id = :'dep2' \gset
select count(*) as n_deliveries from public.webhook_deliveries \gset
select ok((public.deployment_events__append_health(:'dep2', :'org',
    jsonb_build_object('state', 'unhealthy', 'operation', 'revoke', 'reason_code', 'kept_unhealthy', 'revocation_id', :'rev'))).id is null,
  'append_health with the key of an existing event returns null');
select is((select count(*) from public.deployment_events where deployment_id = :'dep2'), :n_events::bigint, 'and writes no event');
select is((select count(*) from public.webhook_deliveries), :n_deliveries::bigint, 'and no delivery');

-- ---- a conflict the functions' look-up misses: the event that holds the key, no second delivery --------
-- (dep2's rotation event is forged with another operation, which record_rotation_health's look-up
-- skips: in one session the only way to reach the insert with the key taken, as a concurrent
-- transaction does under READ COMMITTED without the row lock)
insert into public.deployment_events (deployment_id, org_id, kind, payload)
values (:'dep2', :'org', 'health', jsonb_build_object('state', 'unhealthy', 'operation', 'forged', 'rotation_id', :'rot'))
returning id as forged \gset
select count(*) as n_deliveries from public.webhook_deliveries \gset
set local role cortex_orchestrator;
select public.deployment_events__record_rotation_health(:'dep2', :'rot', 'rollback_unverified') as rot_dep2 \gset
reset role;
select is((:'rot_dep2'::jsonb) ->> 'existing', 'true', 'record_rotation_health: the insert met the index: existing');
select is((:'rot_dep2'::jsonb) ->> 'id', :'forged'::text, 'the event that holds the key is returned');
select is((select count(*) from public.deployment_events where deployment_id = :'dep2' and kind = 'health'
           and payload ->> 'rotation_id' = :'rot'), 1::bigint, 'no second event of the rotation');
select is((select count(*) from public.webhook_deliveries), :n_deliveries::bigint, 'no delivery');

-- ---- the functions' definitions --------------------------------------------------------------------
select ok((select bool_and(p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp']) from pg_proc p
           where p.oid in ('public.deployment_events__record_health(uuid, uuid, text)'::regprocedure,
                           'public.deployment_events__record_rotation_health(uuid, uuid, text)'::regprocedure)),
  'record_health and record_rotation_health: still security definer, search_path pinned');
select ok((select not p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp']
                  and not has_function_privilege('cortex_orchestrator', p.oid, 'execute')
                  and not has_function_privilege('service_role', p.oid, 'execute')
           from pg_proc p where p.oid = 'public.deployment_events__append_health(uuid, uuid, jsonb)'::regprocedure),
  'append_health: still invoker, search_path pinned, executable by no role');

select * from finish();
rollback;
