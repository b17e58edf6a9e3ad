-- Live progress and webhooks (migration *_deployment_events_and_webhooks.sql): every status change
-- and step change writes one event in its own transaction, in order, with only the pipeline's own
-- words in its payload; the log is append-only; a status change puts one delivery per active
-- endpoint in the outbox; endpoint URLs are https to public hosts (loopback only in local mode);
-- the signing secret is returned once, kept in the vault, read only against a committed intent and
-- audited; only the orchestrator's role may call any of it.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(84);

-- ---- privileges -----------------------------------------------------------------------------------
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace
     and (p.proname like 'deployment\_events\_\_%' or p.proname like 'webhook\_%')
     and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute')
          or has_function_privilege('service_role', p.oid, 'execute'))),
  null, 'no API role may execute an event or webhook function');
select is(
  (select array_agg(p.proname::text order by p.proname::text) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and has_function_privilege('cortex_orchestrator', p.oid, 'execute')
     and (p.proname like 'deployment\_events\_\_%' or p.proname like 'webhook\_%')),
  array['deployment_events__list', 'deployment_events__poll', 'deployment_events__record_health',
        'deployment_events__record_rotation_health', 'webhook_deliveries__begin', 'webhook_deliveries__claim',
        'webhook_deliveries__list', 'webhook_deliveries__record', 'webhook_deliveries__release', 'webhook_endpoints__create', 'webhook_endpoints__disable',
        'webhook_endpoints__intend_read', 'webhook_endpoints__list', 'webhook_endpoints__read_secret']::text[],
  'cortex_orchestrator executes exactly the contract functions (no trigger or helper)');
select is(
  (select array_agg(p.proname::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace
     and (p.proname like 'deployment\_events\_\_%' or p.proname like 'webhook\_%')
     and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)),
  null, 'every event and webhook function pins search_path = pg_catalog, pg_temp');
select is(
  (select array_agg(p.proname::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and has_function_privilege('cortex_orchestrator', p.oid, 'execute')
     and (p.proname like 'deployment\_events\_\_%' or p.proname like 'webhook\_%') and not p.prosecdef),
  null, 'every function the orchestrator may call is security definer');
select ok((select bool_and(c.relrowsecurity) from pg_class c
   where c.oid in ('public.deployment_events'::regclass, 'public.webhook_endpoints'::regclass, 'public.webhook_deliveries'::regclass)),
  'row-level security is on for the three tables');
select table_privs_are('public', t, r, case when r in ('authenticated', 'service_role') then array['SELECT'] else array[]::text[] end,
  r || ' may at most select from ' || t)
from unnest(array['deployment_events', 'webhook_endpoints', 'webhook_deliveries']) t,
     unnest(array['anon', 'authenticated', 'service_role', 'cortex_orchestrator']) r;

create function pg_temp.sqlstate_of(p_sql text) returns text language plpgsql as $$
begin
  execute p_sql;
  return '00000';
exception when others then
  return sqlstate;
end
$$;
grant execute on function pg_temp.sqlstate_of(text) to cortex_orchestrator, service_role;

-- ---- fixtures ---------------------------------------------------------------------------------------
select public.organizations__create('Events Org A') ->> 'id' as org_a \gset
select public.organizations__create('Events Org B') ->> 'id' as org_b \gset
select 'sk-ant-events-' || md5(random()::text) as canary \gset
select public.secrets__create(:'org_a', 'a key', 'anthropic', :'canary', repeat('ab', 32)) ->> 'secret_id' as sec_a \gset
select public.webhook_endpoints__create(:'org_a', 'https://hooks.example.com/cortex?x=1') as ep \gset
select (:'ep'::jsonb) ->> 'id' as ep_id, (:'ep'::jsonb) ->> 'secret' as ep_secret \gset
select public.webhook_endpoints__create(:'org_b', 'https://hooks.example.net/b') ->> 'id' as ep_b \gset
select public.deployments__request(:'org_a', 'Events Agent', 'ev-' || substr(md5(random()::text), 1, 8), 'local', null, null,
  'echo', jsonb_build_array(jsonb_build_object('env_var', 'ANTHROPIC_API_KEY', 'secret_id', :'sec_a'))) #>> '{deployment,id}' as dep \gset

-- ---- status and step events --------------------------------------------------------------------------
select is((select array_agg(kind || ':' || (payload ->> 'status') order by id) from public.deployment_events where deployment_id = :'dep'),
  array['status:requested'], 'a new deployment has one event: status requested');

select public.deployments__begin(:'dep', 'provision', 'token-events-1') ->> 'run' as run \gset
select public.deployment_steps__start(:'dep', :run, 'host', 'token-events-1') is not null as x \gset
select public.deployment_steps__finish(:'dep', :run, 'host', 'succeeded', null, false, 'token-events-1') is not null as x \gset
select public.deployment_steps__start(:'dep', :run, 'ssh', 'token-events-1') is not null as x \gset
select public.deployment_steps__finish(:'dep', :run, 'ssh', 'failed',
  'ssh_unreachable: ssh to 203.0.113.7 with key ' || :'canary' || ' failed', true, 'token-events-1') is not null as x \gset

select is(
  (select array_agg(kind || ':' || coalesce(payload ->> 'step', '') || ':' || coalesce(payload ->> 'state', payload ->> 'status') order by id)
   from public.deployment_events where deployment_id = :'dep'),
  array['status::requested', 'status::provisioning', 'step:host:running', 'step:host:succeeded', 'step:ssh:running',
        'step:ssh:failed', 'status:ssh:failed'],
  'every status change and step change is one event, in the order it happened');
select is((select payload from public.deployment_events where deployment_id = :'dep' and kind = 'step' and payload ->> 'state' = 'failed'),
  jsonb_build_object('operation', 'provision', 'run', :run, 'step', 'ssh', 'state', 'failed', 'attempt', 1,
    'duration_ms', (select duration_ms from public.deployment_steps where deployment_id = :'dep' and step = 'ssh'),
    'reason_code', 'ssh_unreachable'),
  'a failed step''s event holds the reason CODE only, not its message');
select is((select payload from public.deployment_events where deployment_id = :'dep' and kind = 'status' and payload ->> 'status' = 'failed'),
  jsonb_build_object('status', 'failed', 'previous_status', 'provisioning', 'operation', 'provision', 'run', :run,
    'step', 'ssh', 'reason_code', 'ssh_unreachable'),
  'the failed status event names the step and the reason code');
select is((select count(*) from public.deployment_events
   where payload::text like '%' || :'canary' || '%' or payload::text like '%203.0.113%' or payload::text like '%Events Agent%'
      or payload::text like '%ev-%'),
  0::bigint, 'no event payload holds a value, an address, a name or a subdomain');
select is((select array_agg(distinct k order by k) from public.deployment_events e, jsonb_object_keys(e.payload) k),
  array['attempt', 'duration_ms', 'operation', 'previous_status', 'reason_code', 'run', 'state', 'status', 'step'],
  'payload keys are the pipeline''s own words only');
select is(public.deployment_events__reason_code('Some free text: with a colon'), 'unexpected',
  'a reason that is not one of ours becomes "unexpected"');

-- a retried step counts its attempt; a reason from elsewhere never leaks
select public.deployments__begin(:'dep', 'provision', 'token-events-2') is not null as x \gset
select public.deployment_steps__start(:'dep', :run, 'ssh', 'token-events-2') is not null as x \gset
select is((select payload ->> 'attempt' from public.deployment_events where deployment_id = :'dep' order by id desc limit 1),
  '2', 'a step started again is an event with attempt 2');
select is((select payload ->> 'status' from public.deployment_events where deployment_id = :'dep' and kind = 'status' order by id desc limit 1),
  'provisioning', 'the retry (failed → provisioning) is a status event');

-- a statement that changes no status writes no status event
select count(*) as n_before from public.deployment_events where deployment_id = :'dep' \gset
update public.deployments set updated_at = now() where id = :'dep';
select is((select count(*) from public.deployment_events where deployment_id = :'dep'), :'n_before'::bigint,
  'an update that leaves the status alone writes no event');

-- ---- the list and poll functions ----------------------------------------------------------------------
select (select min(id) from public.deployment_events where deployment_id = :'dep') as first_id \gset
select public.deployment_events__list(:'dep', :first_id, 2) as page \gset
select is(jsonb_array_length((:'page'::jsonb) -> 'events'), 2, 'a page holds at most the limit');
select ok(((:'page'::jsonb) #>> '{events,0,id}')::bigint > :first_id, 'and only events after the given id');
select is((:'page'::jsonb) ->> 'org_id', :'org_a', 'with the deployment''s org (for the API''s 404)');
select is((:'page'::jsonb) ->> 'status', 'provisioning', 'and its current status');
select is(jsonb_array_length(public.deployment_events__list(:'dep', (select max(id) from public.deployment_events where deployment_id = :'dep')) -> 'events'),
  0, 'nothing after the last event');
select throws_ok(format('select public.deployment_events__list(%L, 0, 5000)', :'dep'), '22023', 'limit: must be between 1 and 1000',
  'a page larger than 1000 is refused');
select throws_ok(format('select public.deployment_events__list(%L)', gen_random_uuid()), 'P0002', null,
  'an unknown deployment is not found');
select is(
  (select jsonb_agg(jsonb_build_object('d', p ->> 'deployment_id', 'n', jsonb_array_length(p -> 'events')))
   from jsonb_array_elements(public.deployment_events__poll(array[:'dep'::uuid, gen_random_uuid()], array[:first_id::bigint, 0], 3)) p),
  jsonb_build_array(jsonb_build_object('d', :'dep', 'n', 3)),
  'poll: one entry per known deployment, at most the limit each');
select throws_ok($$select public.deployment_events__poll(array[gen_random_uuid()], array[]::bigint[])$$, '22023', null,
  'poll: one cursor per deployment');

-- ---- append-only --------------------------------------------------------------------------------------
select throws_ok(format('update public.deployment_events set payload = %L where deployment_id = %L', '{}', :'dep'), '42501',
  'deployment_events is append-only: update refused', 'even the owner cannot update an event');
select throws_ok(format('delete from public.deployment_events where deployment_id = %L', :'dep'), '42501',
  'deployment_events is append-only: delete refused', 'or delete one');
set local role cortex_orchestrator;
select pg_temp.sqlstate_of(format('insert into public.deployment_events (deployment_id, org_id, kind, payload) values (%L, %L, %L, %L)',
  :'dep', :'org_a', 'status', '{"status":"ready"}')) as forged \gset
reset role;
select is(:'forged'::text, '42501', 'the orchestrator cannot forge an event');

-- ---- the outbox -----------------------------------------------------------------------------------------
select is(
  (select array_agg(e.payload ->> 'status' order by w.id) from public.webhook_deliveries w join public.deployment_events e on e.id = w.event_id
   where w.endpoint_id = :'ep_id'),
  array['requested', 'provisioning', 'failed', 'provisioning'],
  'one delivery per status event to the org''s endpoint (steps are not webhooks)');
select is((select count(*) from public.webhook_deliveries w join public.deployment_events e on e.id = w.event_id
   where e.deployment_id = :'dep' and w.endpoint_id <> :'ep_id'), 0::bigint, 'none to another organisation''s endpoint');
-- caps above this endpoint's four (the caps and the breaker: 41_webhook_fair_dispatch.sql)
select public.webhook_deliveries__claim(100, 900, 10, 10) as claimed \gset
select ok((select count(*) from jsonb_array_elements_text(:'claimed'::jsonb) i
   join public.webhook_deliveries w on w.id = i::bigint where w.endpoint_id = :'ep_id') = 4,
  'the claim takes the pending deliveries');
select is(jsonb_array_length(public.webhook_deliveries__claim(100, 900, 10, 10)), 0, 'a second claim takes none of them again');
select min(id) as del_id from public.webhook_deliveries where endpoint_id = :'ep_id' \gset
select public.webhook_deliveries__begin(:del_id) as begun \gset
select is((:'begun'::jsonb) - 'event', jsonb_build_object('action', 'deliver', 'delivery_id', :del_id, 'endpoint_id', :'ep_id',
  'org_id', :'org_a', 'url', 'https://hooks.example.com/cortex?x=1', 'attempt', 1), 'begin: what to deliver, where, which attempt');
select ok((:'begun'::jsonb)::text not like '%whsec_%', 'begin returns no signing secret');
select is(public.webhook_deliveries__record(:del_id, 'retry', 503, 'http_status') ->> 'state', 'queued', 'a retry keeps it queued');
select is(public.webhook_deliveries__record(:del_id, 'delivered', 204) ->> 'attempts', '2', 'delivered on the second attempt');
select is(public.webhook_deliveries__begin(:del_id) ->> 'action', 'skip', 'a delivered delivery is not sent again');
select throws_ok(format('select public.webhook_deliveries__record(%s, %L, 500, %L)', :del_id, 'failed', 'Body: secret'), '22023', null,
  'an error must be a code, never text from the receiver');

-- ---- endpoint URLs ---------------------------------------------------------------------------------------
select is(pg_temp.sqlstate_of(format('select public.webhook_endpoints__create(%L, %L)', :'org_b', u)), '22023', 'refused: ' || u)
from unnest(array[
  'http://hooks.example.com/x', 'ftp://hooks.example.com/x', 'javascript:alert(1)', 'https://user:pw@hooks.example.com/x',
  'https://hooks.example.com@evil.example.org/', 'https://127.0.0.1/x', 'http://127.0.0.1:8080/x', 'https://10.1.2.3/x',
  'https://169.254.169.254/latest/meta-data', 'https://192.168.1.1/', 'https://[::1]/x', 'https://[fe80::1]/x',
  'https://[::ffff:127.0.0.1]/x', 'https://localhost/x', 'https://metadata.google.internal/x', 'https://2130706433/',
  'https://0x7f.0.0.1/', 'https://HOOKS.example.com/x', 'https://hooks.example.com/x#frag', 'https://hooks.example.com/a b',
  'https://hooks.example.com:99999/', 'https://100.64.0.1/']) u;
select is(pg_temp.sqlstate_of(format('select public.webhook_endpoints__create(%L, %L, true)', :'org_b', 'http://127.0.0.1:8080/hook')),
  '00000', 'local mode admits http://127.0.0.1');
select is(pg_temp.sqlstate_of(format('select public.webhook_endpoints__create(%L, %L, true)', :'org_b', 'http://10.0.0.5/hook')),
  '22023', 'local mode admits loopback only, not other private addresses');
select is(pg_temp.sqlstate_of(format('select public.webhook_endpoints__create(%L, %L)', :'org_b', 'https://93.184.215.14:8443/h')),
  '00000', 'a public IPv4 literal with a port is accepted');

-- ---- the signing secret -----------------------------------------------------------------------------------
select ok(:'ep_secret' ~ '^whsec_[A-Za-z0-9+/]{43}=$', 'the secret is whsec_ + base64 of 32 bytes (Standard Webhooks)');
select is((select count(*) from public.webhook_endpoints e where to_jsonb(e)::text like '%' || substr(:'ep_secret', 7) || '%'), 0::bigint,
  'no table row holds the secret');
select ok(public.webhook_endpoints__list(:'org_a')::text not like '%whsec%' and public.webhook_endpoints__list(:'org_a')::text like '%' || :'ep_id' || '%',
  'the list shows the endpoint, never its secret');
select is((select count(*) from public.secret_access_log where org_id = :'org_a' and operation = 'create'
   and reason = 'webhook signing secret of endpoint ' || :'ep_id'), 1::bigint, 'its creation is audited in the org''s chain');
-- a read without a committed intent is a denial (an intent written in this same transaction is not committed)
select public.webhook_endpoints__intend_read(:'ep_id', 'pgtap') ->> 'intent_id' as intent \gset
select is(public.webhook_endpoints__read_secret(:'ep_id', :'intent') - 'reason', '{"status": "denied"}'::jsonb,
  'a read against an intent of its own transaction is denied, with no value');
select is((select outcome from public.secret_access_log where org_id = :'org_a' and operation = 'read' order by id desc limit 1),
  'denied', 'and audited');
select throws_ok(format('select public.webhook_endpoints__disable(%L, %L)', :'org_b', :'ep_id'), 'P0002', null,
  'another organisation cannot remove the endpoint (not found)');
select is(public.webhook_endpoints__disable(:'org_a', :'ep_id') ->> 'disabled_at' is not null, true, 'its own organisation can');
select is((select count(*) from vault.secrets where name = 'webhook:' || :'org_a' || ':' || :'ep_id'), 0::bigint,
  'and its secret is deleted from the vault');
select is((select count(*) from public.webhook_deliveries where endpoint_id = :'ep_id' and state in ('pending', 'queued')), 0::bigint,
  'and its undelivered deliveries are cancelled');

select * from finish();
rollback;
