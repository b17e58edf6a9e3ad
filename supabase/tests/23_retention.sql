-- Retention of the API's bookkeeping (migration *_retention.sql): old idempotency keys, finished
-- webhook deliveries and the events of settled deployments go; recent ones, pending deliveries (and
-- the events they name) and every event of a deployment still moving stay; the orchestrator's role
-- may run it but not below the floors, cannot replace it, and deletes nothing directly; the audit
-- log is untouched.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(32);

create function pg_temp.sqlstate_of(p_sql text) returns text language plpgsql as $$
begin
  execute p_sql;
  return '00000';
exception when others then
  return sqlstate;
end
$$;
grant execute on function pg_temp.sqlstate_of(text) to cortex_orchestrator, service_role;

-- ---- privileges -----------------------------------------------------------------------------------
select is(
  (select r.rolname::text from pg_proc p join pg_roles r on r.oid = p.proowner
   where p.oid = 'public.api_retention__apply(integer, integer, integer, integer)'::regprocedure),
  'cortex_api_retention', 'api_retention__apply is owned by its own role');
select ok(
  (select p.prosecdef and p.prorettype = 'jsonb'::regtype and p.proconfig @> array['search_path=pg_catalog, pg_temp']
   from pg_proc p where p.oid = 'public.api_retention__apply(integer, integer, integer, integer)'::regprocedure),
  'it is security definer, returns jsonb and pins search_path');
select ok(has_function_privilege('cortex_orchestrator', 'public.api_retention__apply(integer, integer, integer, integer)', 'execute'),
  'cortex_orchestrator may execute it (the maintenance job runs as that role)');
select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role']) r
   where has_function_privilege(r, 'public.api_retention__apply(integer, integer, integer, integer)', 'execute')),
  null, 'no other API role may execute it');
select ok((select not rolcanlogin and not rolsuper and not rolbypassrls and not rolinherit
           from pg_roles where rolname = 'cortex_api_retention'),
  'cortex_api_retention is NOLOGIN, NOINHERIT, no superuser, no BYPASSRLS');
select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role', 'cortex_orchestrator', 'authenticator']) r
   where pg_has_role(r, 'cortex_api_retention', 'member')),
  null, 'no API role is a member of cortex_api_retention (none can become it)');
select is(
  (select array_agg(t order by t) from unnest(array['api_idempotency_keys', 'webhook_deliveries', 'deployment_events']) t
   where has_table_privilege('cortex_orchestrator', 'public.' || t, 'delete, truncate, update')),
  null, 'cortex_orchestrator holds no DELETE, UPDATE or TRUNCATE on the three tables');
select is(
  (select array_agg(c.relname::text order by c.relname::text) from pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
     and has_table_privilege('cortex_api_retention', c.oid, 'delete')),
  array['api_idempotency_keys', 'deployment_events', 'webhook_deliveries']::text[],
  'cortex_api_retention may delete from these three tables and no other (the audit log included)');
select is(
  (select array_agg(c.relname::text order by 1) from pg_class c
   where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
     and has_table_privilege('cortex_api_retention', c.oid, 'insert, update, truncate')),
  null, 'cortex_api_retention may insert, update or truncate nothing');

-- ---- fixtures ---------------------------------------------------------------------------------------
select public.organizations__create('Retention Org A') ->> 'id' as org_a \gset
select public.organizations__create('Retention Org B') ->> 'id' as org_b \gset
select public.webhook_endpoints__create(:'org_b', 'https://hooks.example.net/retention') ->> 'id' as ep_b \gset
create function pg_temp.dep(p_org uuid, p_name text) returns uuid language sql as $$
  select (public.deployments__request(p_org, p_name, 'ret-' || substr(md5(random()::text), 1, 10)) #>> '{deployment,id}')::uuid
$$;
select pg_temp.dep(:'org_a', 'old ready') as dep_old \gset
select pg_temp.dep(:'org_a', 'still provisioning') as dep_running \gset
select pg_temp.dep(:'org_a', 'recent ready') as dep_recent \gset
select pg_temp.dep(:'org_b', 'with deliveries') as dep_hooked \gset
-- requested → provisioning → ready (the status guard allows no shortcut); each change is an event
update public.deployments set status = 'provisioning' where id in (:'dep_old', :'dep_running', :'dep_recent', :'dep_hooked');
update public.deployments set status = 'ready' where id in (:'dep_old', :'dep_recent', :'dep_hooked');
select is((select count(*)::int from public.deployment_events where deployment_id = :'dep_old'), 3,
  'fixture: the old deployment has three status events');
select is((select count(*)::int from public.webhook_deliveries where endpoint_id = :'ep_b'), 3,
  'fixture: org B''s endpoint has a delivery per status event');
-- age them (the table owner may lift the append-only trigger inside this transaction only)
alter table public.deployment_events disable trigger deployment_events_append_only;
update public.deployment_events set at = now() - interval '40 days'
where deployment_id in (:'dep_old', :'dep_running', :'dep_hooked');
alter table public.deployment_events enable trigger deployment_events_append_only;
-- org B's first two deliveries were delivered 40 days ago, the last is still pending
update public.webhook_deliveries w set state = 'delivered', attempts = 1, last_status = 200,
  created_at = now() - interval '40 days', finished_at = now() - interval '40 days'
where w.endpoint_id = :'ep_b'
  and w.event_id in (select e.id from public.deployment_events e where e.deployment_id = :'dep_hooked'
                     and e.payload ->> 'status' <> 'ready');
select max(id) as hooked_ready_event from public.deployment_events where deployment_id = :'dep_hooked' \gset
-- idempotency keys: three 10 days old, one an hour old
insert into public.api_idempotency_keys (org_id, key, body_hash, created_at)
select :'org_a', 'old-' || i, repeat('ab', 32), now() - interval '10 days' from generate_series(1, 3) i;
insert into public.api_idempotency_keys (org_id, key, body_hash, created_at)
values (:'org_a', 'recent', repeat('ab', 32), now() - interval '1 hour');
select count(*) as audit_before from public.secret_access_log \gset

-- ---- the floors: the orchestrator's role cannot lower the minimum ages ---------------------------
set local role cortex_orchestrator;
select throws_ok($$select public.api_retention__apply(3600, 2592000, 2592000)$$, '22023',
  'idempotency_keys_seconds: must be at least 86400 (1 day)', 'keys younger than a day cannot be removed');
select throws_ok($$select public.api_retention__apply(604800, 86400, 2592000)$$, '22023',
  'events_seconds: must be at least 604800 (7 days)', 'events younger than 7 days cannot be removed');
select throws_ok($$select public.api_retention__apply(604800, 2592000, 0)$$, '22023',
  'deliveries_seconds: must be at least 604800 (7 days)', 'deliveries younger than 7 days cannot be removed');
select throws_ok($$select public.api_retention__apply(null, 2592000, 2592000)$$, '22023',
  'idempotency_keys_seconds: must be at least 86400 (1 day)', 'a null age is refused, not taken as zero');
select is(pg_temp.sqlstate_of($$create or replace function public.api_retention__apply(integer, integer, integer, integer)
  returns jsonb language sql as 'select ''{}''::jsonb'$$), '42501', 'the orchestrator''s role cannot replace the function');
select is(pg_temp.sqlstate_of($$alter function public.api_retention__apply(integer, integer, integer, integer) owner to cortex_orchestrator$$),
  '42501', 'nor take it over');
select is(pg_temp.sqlstate_of(format('delete from public.deployment_events where deployment_id = %L', :'dep_old')), '42501',
  'nor delete an event directly');
select is(pg_temp.sqlstate_of('delete from public.api_idempotency_keys'), '42501', 'nor an idempotency key');
reset role;
select throws_ok(format('delete from public.deployment_events where deployment_id = %L', :'dep_old'), '42501',
  'deployment_events is append-only: delete refused', 'the event log stays append-only for everyone else, the owner included');

-- ---- a run --------------------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.api_retention__apply(604800, 2592000, 2592000, 1) as batch1 \gset
select public.api_retention__apply(604800, 2592000, 2592000) as run \gset
reset role;
select is((:'batch1'::jsonb) ->> 'idempotency_keys', '1', 'a batch of 1 removes one key');
select is((:'run'::jsonb) ->> 'idempotency_keys', '2', 'the next run removes the other old keys');
select is((select array_agg(key order by key) from public.api_idempotency_keys where org_id = :'org_a'), array['recent'],
  'the key an hour old stays');
select is((select count(*)::int from public.deployment_events where deployment_id = :'dep_old'), 0,
  'a settled (ready) deployment''s events older than the cut-off are removed');
select is((select count(*)::int from public.deployment_events where deployment_id = :'dep_running'), 2,
  'every event of a deployment still provisioning stays, however old (a follower from the start needs them all)');
select is((select count(*)::int from public.deployment_events where deployment_id = :'dep_recent'), 3,
  'recent events stay');
select is((select array_agg(state order by id) from public.webhook_deliveries where endpoint_id = :'ep_b'), array['pending'],
  'finished deliveries older than the cut-off are removed, a pending one stays');
select is((select array_agg(id order by id) from public.deployment_events where deployment_id = :'dep_hooked'),
  array[:'hooked_ready_event'::bigint], 'an old event a pending delivery names stays; the others of its deployment go');
select is((select count(*) from public.secret_access_log), :'audit_before'::bigint, 'the audit log is untouched');
-- what a resuming SSE reader sees afterwards: the status from the deployment, nothing repeated
select is((public.deployment_events__list(:'dep_old', 0) -> 'events'), '[]'::jsonb,
  'a follower of the trimmed deployment gets no events ...');
select is((public.deployment_events__list(:'dep_old', 0) ->> 'status'), 'ready', '... and its final status, which ends the stream');
select is((public.deployment_events__list(:'dep_running', 0) -> 'events' -> 0 -> 'payload' ->> 'status'), 'requested',
  'a follower of the running deployment still starts at its first event');

select * from finish();
rollback;
