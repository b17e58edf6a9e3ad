-- Review R8 finding 5 (issue 11; 20261205100000_health_events.sql): a deployment whose agent the
-- revoke job restarted without the revoked key and kept running although unhealthy gets a `health`
-- event and one webhook delivery per active endpoint of its organisation, once per (revocation,
-- deployment); only cortex_orchestrator may record one, only under an open revocation of a secret
-- bound to that deployment (its own or the whole secret's), of the deployment's organisation, with
-- a reason code from the allow-list.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(37);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- privileges -------------------------------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.deployment_events__record_health(uuid, uuid, text)', 'execute'),
  r || ' may not record a health event')
from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(has_function_privilege('cortex_orchestrator', 'public.deployment_events__record_health(uuid, uuid, text)', 'execute'),
  'cortex_orchestrator may record a health event');
select ok((select p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp'] from pg_proc p
           where p.oid = 'public.deployment_events__record_health(uuid, uuid, text)'::regprocedure),
  'security definer, search_path pinned to pg_catalog, pg_temp');
set local role authenticated;
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', gen_random_uuid(), gen_random_uuid(), 'kept_unhealthy'),
  '42501', null, 'authenticated: permission denied');
reset role;
set local role service_role;
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', gen_random_uuid(), gen_random_uuid(), 'kept_unhealthy'),
  '42501', null, 'service_role: permission denied');
reset role;

-- ---- fixtures ---------------------------------------------------------------------------------------
select public.organizations__create('R8 health A') ->> 'id' as org \gset
select public.organizations__create('R8 health B') ->> 'id' as org_b \gset
select public.deployments__create(:'org', 'R8 H1', 'r8h1-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org', 'R8 H2', 'r8h2-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep2 \gset
select public.deployments__create(:'org', 'R8 H3', 'r8h3-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_off \gset
select public.deployments__create(:'org_b', 'R8 HB', 'r8hb-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_b \gset
select 'canary-r8h-' || md5(random()::text) as v \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v', pg_temp.fp(:'v')) ->> 'secret_id' as s \gset
select public.secrets__create(:'org', 'openai', 'openai', :'v' || 'o', pg_temp.fp(:'v' || 'o')) ->> 'secret_id' as s_other \gset
select public.secrets__create(:'org', 'other', 'openai', :'v' || 'd', pg_temp.fp(:'v' || 'd')) ->> 'secret_id' as s_done \gset
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'s') is not null as b \gset
select public.deployment_secrets__bind(:'dep2', 'ANTHROPIC_API_KEY', :'s') is not null as b \gset
select public.deployment_secrets__bind(:'dep_off', 'ANTHROPIC_API_KEY', :'s') is not null as b \gset
select public.deployment_secrets__bind(:'dep2', 'OPENAI_API_KEY', :'s_other') is not null as b \gset
select public.deployment_secrets__bind(:'dep', 'OTHER_KEY', :'s_done') is not null as b \gset
-- org B's deployment bound to org A's secret, which no function allows: so that the refusal below
-- is the organisation check and nothing else
insert into public.deployment_secrets (deployment_id, env_var, secret_id) values (:'dep_b', 'ANTHROPIC_API_KEY', :'s');
update public.deployments set status = 'provisioning' where id in (:'dep', :'dep2', :'dep_b');
update public.deployments set status = 'ready' where id in (:'dep', :'dep2', :'dep_b');
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a1') ->> 'id' as ep1 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a2') ->> 'id' as ep2 \gset
select public.webhook_endpoints__create(:'org', 'https://hooks.example.com/a3') ->> 'id' as ep3 \gset
select public.webhook_endpoints__disable(:'org', :'ep3') is not null as x \gset
select public.webhook_endpoints__create(:'org_b', 'https://hooks.example.net/b') ->> 'id' as ep_b \gset
set local role cortex_orchestrator;
select public.secrets__request_revoke(:'s', null, null, 'token:t') ->> 'revocation_id' as rev \gset
select public.secrets__request_revoke(:'s', :'dep2', null, 'token:t') ->> 'revocation_id' as rev_dep2 \gset
select public.secrets__request_revoke(:'s_other', null, null, 'token:t') ->> 'revocation_id' as rev_other \gset
select public.secrets__request_revoke(:'s_done', :'dep', null, 'token:t') ->> 'revocation_id' as rev_done \gset
reset role;
update public.secret_revocations set state = 'done', finished_at = now() where id = :'rev_done';

-- ---- the event and its deliveries ------------------------------------------------------------------
set local role cortex_orchestrator;
select public.deployment_events__record_health(:'dep', :'rev', 'kept_unhealthy') as first \gset
reset role;
select is((:'first'::jsonb) ->> 'existing', 'false', 'the first call records the event');
select is((select kind || ' ' || org_id from public.deployment_events where id = ((:'first'::jsonb) ->> 'id')::bigint),
  'health ' || :'org', 'one `health` event, of the deployment''s organisation');
select is((select payload from public.deployment_events where id = ((:'first'::jsonb) ->> 'id')::bigint),
  jsonb_build_object('state', 'unhealthy', 'operation', 'revoke', 'reason_code', 'kept_unhealthy', 'revocation_id', :'rev'),
  'its payload: state, operation, reason code and revocation id only');
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
select is((:'listed'::jsonb) -> 'events' -> -1 ->> 'kind', 'health', 'and the event stream lists it (deployment_events__list)');

-- a retried job: the same event, no second delivery
set local role cortex_orchestrator;
select public.deployment_events__record_health(:'dep', :'rev', 'kept_unhealthy') as again \gset
reset role;
select is((:'again'::jsonb) ->> 'existing', 'true', 'a second call for the same (revocation, deployment) says existing');
select is((:'again'::jsonb) ->> 'id', (:'first'::jsonb) ->> 'id', 'and returns the first event');
select is((select count(*) from public.deployment_events where deployment_id = :'dep' and kind = 'health')
          || ' ' || (select count(*) from public.webhook_deliveries w join public.deployment_events e on e.id = w.event_id
                     where e.deployment_id = :'dep' and e.kind = 'health'),
  '1 2', 'idempotent: still one health event and two deliveries');

-- a one-deployment revocation, while the deployment shows `rotating` (the job records it mid-swap)
update public.deployments set status = 'rotating' where id = :'dep2';
set local role cortex_orchestrator;
select public.deployment_events__record_health(:'dep2', :'rev_dep2', 'kept_unhealthy') as one \gset
reset role;
select is((:'one'::jsonb) ->> 'existing' || ' ' || ((:'one'::jsonb) #>> '{payload,revocation_id}'), 'false ' || :'rev_dep2',
  'a one-deployment revocation records its own event for its deployment, also while it is rotating');
-- the whole-secret revocation is another revocation: its own event for dep2 too
set local role cortex_orchestrator;
select is(public.deployment_events__record_health(:'dep2', :'rev', 'kept_unhealthy') ->> 'existing', 'false',
  'idempotence is per revocation: the whole-secret revocation records its own for dep2');
reset role;

-- ---- refusals ------------------------------------------------------------------------------------------
set local role cortex_orchestrator;
select throws_ok(format('select public.deployment_events__record_health(null, %L, %L)', :'rev', 'kept_unhealthy'),
  '22023', 'deployment_id: is required', 'a null deployment is refused, naming the field');
select throws_ok(format('select public.deployment_events__record_health(%L, null, %L)', :'dep', 'kept_unhealthy'),
  '22023', 'revocation_id: is required', 'a null revocation is refused, naming the field');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, null)', :'dep', :'rev'),
  '22023', 'reason_code: is required', 'a null reason code is refused, naming the field');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep', :'rev', 'unexpected'),
  '22023', 'reason_code: must be kept_unhealthy', 'a reason code off the allow-list is refused');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep', :'rev',
  'kept_unhealthy: agent at 203.0.113.9 said ' || :'v'), '22023', 'reason_code: must be kept_unhealthy',
  'free text is refused (org members read events; webhooks send them out)');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', gen_random_uuid(), :'rev', 'kept_unhealthy'),
  'P0002', null, 'an unknown deployment is not found');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep', gen_random_uuid(), 'kept_unhealthy'),
  '22023', null, 'a made-up revocation is refused');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep', :'rev_done', 'kept_unhealthy'),
  '22023', null, 'a revocation that is not open is refused (its secret still bound to the deployment)');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep', :'rev_other', 'kept_unhealthy'),
  '22023', null, 'a revocation of a secret not bound to this deployment is refused');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep', :'rev_dep2', 'kept_unhealthy'),
  '22023', null, 'another deployment''s revocation is refused (the secret is bound to both)');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep_b', :'rev', 'kept_unhealthy'),
  '22023', null, 'a deployment of another organisation is refused (even bound to the secret)');
select throws_ok(format('select public.deployment_events__record_health(%L, %L, %L)', :'dep_off', :'rev', 'kept_unhealthy'),
  '22023', null, 'a deployment that runs no agent (requested) is refused');
reset role;
select is((select count(*) from public.deployment_events where kind = 'health' and deployment_id not in (:'dep', :'dep2')),
  0::bigint, 'no refused call wrote an event');
select is((select count(*) from public.webhook_deliveries where endpoint_id = :'ep_b'), 0::bigint,
  'and the other organisation''s endpoint got nothing');

-- ---- the kind check ---------------------------------------------------------------------------------
select throws_ok(format('insert into public.deployment_events (deployment_id, org_id, kind, payload) values (%L, %L, %L, %L)',
  :'dep', :'org', 'bogus', '{}'), '23514', null, 'a kind other than status, step and health is refused');
select ok((select convalidated from pg_constraint
           where conrelid = 'public.deployment_events'::regclass and conname = 'deployment_events_kind_check'),
  'the widened kind check is validated (20261205100100)');
select is((select pg_get_constraintdef(oid) from pg_constraint
           where conrelid = 'public.deployment_events'::regclass and conname = 'deployment_events_kind_check'),
  'CHECK ((kind = ANY (ARRAY[''status''::text, ''step''::text, ''health''::text])))', 'and allows status, step and health');

select * from finish();
rollback;
