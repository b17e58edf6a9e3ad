-- Retention of the API's own bookkeeping (issue 10): idempotency keys of deployment requests, the
-- deployment event log and webhook deliveries, which would otherwise grow forever. The audit log
-- (secret_access_log) is NOT touched here: its retention stays the database owner's
-- (secret_access_log__apply_retention, with the owner's minimum age).
--
-- Who may run it. api_retention__apply is security definer, owned by cortex_api_retention: a
-- NOLOGIN role, a member of nothing, that no API role is a member of, holding only SELECT/DELETE on
-- the three tables (and SELECT on what the event rule reads). The event log's append-only trigger
-- lets a DELETE through only when current_user is that role, i.e. only inside this function: the
-- retention path is recognised by who runs it, not by a setting any session could set (the same
-- reasoning as the audit log's cortex_audit_retention).
--
-- Unlike the audit log's, this one may be called by cortex_orchestrator, because the maintenance
-- job (a worker, running as that role) runs it on a schedule with the configured ages. That is
-- safe because the minimum ages (floors) are constants in this function's body: the orchestrator's
-- role owns no function and cannot replace it, and no session setting is read. The most a stolen
-- orchestrator credential can do is forget, earlier than configured but never younger than the
-- floor, records of its own kind (keys it writes, events of settled deployments, finished
-- deliveries); it gains no DELETE on any table and nothing on the audit log.
--
-- The event rule follows what live progress needs: an SSE client that follows a deployment from
-- its start (no Last-Event-ID) must see every step of the operation in progress, and one that
-- resumes must get every later event; so no event of a deployment that is not in a final state and
-- settled (deployment_events__settled) is removed. The end of a stream (`event: end`, or 204 on a
-- resume) comes from the deployment's status, which retention does not change; event ids are an
-- identity and never reused. An event that a webhook delivery still names stays too (foreign key).

-- no long lock on a live database (see .squawk.toml)
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- ---- the role -----------------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'cortex_api_retention') then
    create role cortex_api_retention nologin noinherit;
  end if;
end
$$;

-- ---- the event log's append-only trigger: retention's deletes only --------------------------------
create or replace function public.deployment_events__refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  -- current_user inside api_retention__apply (security definer) is its owner; no other session can be
  if tg_op = 'DELETE' and current_user = 'cortex_api_retention' then
    return old;
  end if;
  raise exception using errcode = '42501', message = pg_catalog.format(
    'deployment_events is append-only: %s refused', pg_catalog.lower(tg_op));
end
$$;

-- ---- retention ----------------------------------------------------------------------------------
-- Removes, at most p_batch rows of each kind per call (short transactions; the job calls again
-- while a kind came back full):
--   * idempotency keys older than p_idempotency_keys_seconds (floor 1 day);
--   * webhook deliveries in a final state (delivered, failed, cancelled) finished longer than
--     p_deliveries_seconds ago (floor 7 days); a pending or queued one stays;
--   * events older than p_events_seconds (floor 7 days) of a deployment that is in a final state
--     (ready, failed, deleted) and settled, or that no longer exists; never one a delivery names.
-- Returns {"idempotency_keys": n, "webhook_deliveries": n, "events": n}.
create function public.api_retention__apply(
  p_idempotency_keys_seconds integer,
  p_events_seconds integer,
  p_deliveries_seconds integer,
  p_batch integer default 10000
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_keys bigint;
  v_deliveries bigint;
  v_events bigint;
begin
  if p_idempotency_keys_seconds is null or p_idempotency_keys_seconds < 86400 then
    raise exception using errcode = '22023', message = 'idempotency_keys_seconds: must be at least 86400 (1 day)';
  end if;
  if p_events_seconds is null or p_events_seconds < 604800 then
    raise exception using errcode = '22023', message = 'events_seconds: must be at least 604800 (7 days)';
  end if;
  if p_deliveries_seconds is null or p_deliveries_seconds < 604800 then
    raise exception using errcode = '22023', message = 'deliveries_seconds: must be at least 604800 (7 days)';
  end if;
  if p_batch is null or p_batch not between 1 and 100000 then
    raise exception using errcode = '22023', message = 'batch: must be between 1 and 100000';
  end if;

  delete from public.api_idempotency_keys k
  where (k.org_id, k.key) in (
    select x.org_id, x.key from public.api_idempotency_keys x
    where x.created_at < v_now - pg_catalog.make_interval(secs => p_idempotency_keys_seconds)
    limit p_batch);
  get diagnostics v_keys = row_count;

  delete from public.webhook_deliveries w
  where w.id in (
    select x.id from public.webhook_deliveries x
    where x.state in ('delivered', 'failed', 'cancelled')
      and coalesce(x.finished_at, x.created_at) < v_now - pg_catalog.make_interval(secs => p_deliveries_seconds)
    limit p_batch);
  get diagnostics v_deliveries = row_count;

  delete from public.deployment_events e
  where e.id in (
    select x.id from public.deployment_events x
    where x.at < v_now - pg_catalog.make_interval(secs => p_events_seconds)
      and not exists (select 1 from public.webhook_deliveries w where w.event_id = x.id)
      and not exists (
        select 1 from public.deployments d
        where d.id = x.deployment_id
          and (d.status not in ('ready', 'failed', 'deleted') or not public.deployment_events__settled(d)))
    order by x.id
    limit p_batch);
  get diagnostics v_events = row_count;

  return pg_catalog.jsonb_build_object(
    'idempotency_keys', v_keys, 'webhook_deliveries', v_deliveries, 'events', v_events);
end
$$;
revoke all on function public.api_retention__apply(integer, integer, integer, integer)
  from public, anon, authenticated, service_role;

-- the owner: cortex_api_retention (the owner must be a member to hand the function over; a
-- non-superuser may give an object to a role only if that role may CREATE in its schema: lent for
-- the statement, taken back at once)
grant cortex_api_retention to current_user;
grant create on schema public to cortex_api_retention;
alter function public.api_retention__apply(integer, integer, integer, integer) owner to cortex_api_retention;
revoke create on schema public from cortex_api_retention;
revoke all on function public.api_retention__apply(integer, integer, integer, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.api_retention__apply(integer, integer, integer, integer) to cortex_orchestrator;

-- exactly what retention needs
grant usage on schema public to cortex_api_retention;
grant select, delete on table public.api_idempotency_keys, public.webhook_deliveries, public.deployment_events
  to cortex_api_retention;
grant select on table public.deployments, public.deployment_steps to cortex_api_retention;
grant execute on function public.deployment_events__settled(public.deployments) to cortex_api_retention;
create policy api_idempotency_keys_retention on public.api_idempotency_keys
  for all to cortex_api_retention using (true);
create policy webhook_deliveries_retention on public.webhook_deliveries
  for all to cortex_api_retention using (true);
create policy deployment_events_retention on public.deployment_events
  for all to cortex_api_retention using (true);
create policy deployments_retention_read on public.deployments
  for select to cortex_api_retention using (true);
create policy deployment_steps_retention_read on public.deployment_steps
  for select to cortex_api_retention using (true);
