-- Review R12 finding 4 (issue 11): one health event per (revocation, deployment) and per
-- (rotation, deployment), now under any isolation level. Each of deployment_events__record_health,
-- __record_rotation_health (and so the `rolled_back` record of secret_rotation_deployments__set_state,
-- which calls the latter) looked for the event and otherwise inserted one, under the deployment's
-- row lock. Under READ COMMITTED the second of two calls waits for the lock and then sees the
-- first's event; under REPEATABLE READ (or SERIALIZABLE) a transaction whose snapshot predates the
-- first's commit does not, and inserted a second event with a second set of webhook deliveries.
--
-- The unique indexes of 20261206090000_health_events_unique.sql and
-- 20261206090050_health_events_unique_rotation.sql now refuse the second event, and
-- deployment_events__append_health inserts it with ON CONFLICT DO NOTHING and, on a conflict,
-- writes no delivery and returns null. What the second caller gets:
--   * READ COMMITTED: as before, the lookup finds the first event (`existing: true`); should a
--     conflict still happen, the caller reads the event and answers `existing: true` too.
--   * REPEATABLE READ / SERIALIZABLE: the insert raises 40001 (could not serialize access due to
--     concurrent update): Postgres does so when the row in conflict is not in the snapshot. The
--     transaction rolls back with nothing written; a retry (healthRetryable retries 40001) finds
--     the event: `existing: true`.
-- Either way one event and one delivery per active endpoint exist. Same signatures, security
-- definer (append_health: invoker, callable by no role), search_path, grants (re-stated below).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function public.deployment_events__append_health(p_deployment_id uuid, p_org_id uuid, p_payload jsonb)
returns public.deployment_events
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event public.deployment_events%rowtype;
begin
  -- one health event per (deployment, revocation) and per (deployment, rotation): the unique
  -- indexes of 20261206090000/090050 are the arbiters. A conflict inserts nothing and sends nothing: the
  -- caller returns the event already there (see the callers below for when this happens). No
  -- conflict target: every unique index of the table is an arbiter (the primary key, an identity,
  -- never conflicts)
  insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (p_deployment_id, p_org_id, 'health', p_payload)
  on conflict do nothing
  returning * into v_event;
  if not found then
    return null;
  end if;
  insert into public.webhook_deliveries (endpoint_id, event_id, org_id)
  select e.id, v_event.id, p_org_id
  from public.webhook_endpoints e
  where e.org_id = p_org_id and e.disabled_at is null
  order by e.id;
  return v_event;
end
$$;
revoke all on function public.deployment_events__append_health(uuid, uuid, jsonb) from public, anon, authenticated, service_role;

create or replace function public.deployment_events__record_health(
  p_deployment_id uuid,
  p_revocation_id uuid,
  p_reason_code text
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_dep public.deployments%rowtype;
  v_rev public.secret_revocations%rowtype;
  v_event public.deployment_events%rowtype;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  perform public.input__check_required('revocation_id', p_revocation_id);
  perform public.input__check_required('reason_code', p_reason_code);
  -- an allow-list, not a pattern: events are read by org members and sent to third parties
  if p_reason_code not in ('kept_unhealthy') then
    raise exception using errcode = '22023', message = 'reason_code: must be kept_unhealthy';
  end if;
  -- the deployment's row lock, as the status and step triggers take it: event ids of one deployment
  -- are drawn in commit order, and two calls for the same (revocation, deployment) run one after
  -- the other, so the second finds the first's event below
  select * into v_dep from public.deployments d where d.id = p_deployment_id for no key update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  select * into v_rev from public.secret_revocations r where r.id = p_revocation_id;
  if not found or v_rev.state <> 'open' or v_rev.org_id <> v_dep.org_id
     or (v_rev.deployment_id is not null and v_rev.deployment_id <> p_deployment_id)
     or not exists (select 1 from public.deployment_secrets b
                    where b.secret_id = v_rev.secret_id and b.deployment_id = p_deployment_id) then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'revocation_id: %s is not an open revocation of a secret bound to deployment %s', p_revocation_id, p_deployment_id);
  end if;
  if v_dep.status not in ('ready', 'rotating') then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'deployment_id: deployment %s is %s; a health event is for a deployment that runs its agent', p_deployment_id, v_dep.status);
  end if;

  select * into v_event from public.deployment_events x
  where x.deployment_id = p_deployment_id and x.kind = 'health'
    and x.payload ->> 'revocation_id' = p_revocation_id::text
  order by x.id limit 1;
  if found then
    return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', true);
  end if;
  select * into v_event from public.deployment_events__append_health(p_deployment_id, v_dep.org_id,
    pg_catalog.jsonb_build_object(
      'state', 'unhealthy',
      'operation', 'revoke',
      'reason_code', p_reason_code,
      'revocation_id', p_revocation_id));
  if v_event.id is null then
    -- the unique index found an event of this (deployment, revocation) the lookup above did not
    -- see. Under REPEATABLE READ or SERIALIZABLE the insert raises 40001 instead (the other event
    -- is not in this transaction's snapshot), and the caller's retry finds it above; under READ
    -- COMMITTED the deployment's row lock already orders two calls, so this is a safeguard: the
    -- other transaction has committed, a new statement sees its event. Looked up by the index's
    -- key alone: the event that holds it
    select * into v_event from public.deployment_events x
    where x.deployment_id = p_deployment_id and x.kind = 'health'
      and x.payload ->> 'revocation_id' = p_revocation_id::text
    order by x.id limit 1;
    if not found then
      raise exception using errcode = '40001', message = pg_catalog.format(
        'revocation_id: a concurrent health event of deployment %s is not visible yet; retry', p_deployment_id);
    end if;
    return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', true);
  end if;
  return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', false);
end
$$;

revoke all on function public.deployment_events__record_health(uuid, uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.deployment_events__record_health(uuid, uuid, text) to cortex_orchestrator;

create or replace function public.deployment_events__record_rotation_health(
  p_deployment_id uuid,
  p_rotation_id uuid,
  p_reason_code text
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_dep public.deployments%rowtype;
  v_rot public.secret_rotations%rowtype;
  v_event public.deployment_events%rowtype;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  perform public.input__check_required('rotation_id', p_rotation_id);
  perform public.input__check_required('reason_code', p_reason_code);
  -- an allow-list, not a pattern: events are read by org members and sent to third parties
  if p_reason_code not in ('rollback_unverified') then
    raise exception using errcode = '22023', message = 'reason_code: must be rollback_unverified';
  end if;
  -- the deployment's row lock first, as the status and step triggers (and record_health) take it:
  -- event ids of one deployment are drawn in commit order, and two calls for the same (rotation,
  -- deployment) run one after the other, so the second finds the first's event below. The rotation
  -- and its rows are read without a lock: the row that matters is in an end state, which never
  -- changes; the rotation's state, below.
  select * into v_dep from public.deployments d where d.id = p_deployment_id for no key update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  select * into v_rot from public.secret_rotations r where r.id = p_rotation_id;
  if not found or v_rot.org_id <> v_dep.org_id
     or not exists (select 1 from public.secret_rotation_deployments rd
                    where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id
                      and rd.state = 'rolled_back' and rd.reason = 'unhealthy_rollback_unverified') then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'rotation_id: %s is not a running rotation of this organisation that rolled deployment %s back unverified',
      p_rotation_id, p_deployment_id);
  end if;
  -- recorded already (by set_state, since 20261205130000): the same event, whatever has happened
  -- since (the rotation finished, the deployment deprovisioned): nothing new is sent, and the
  -- caller is not told it failed (review R14 finding 2)
  select * into v_event from public.deployment_events x
  where x.deployment_id = p_deployment_id and x.kind = 'health' and x.payload ->> 'operation' = 'rotate'
    and x.payload ->> 'rotation_id' = p_rotation_id::text
  order by x.id limit 1;
  if found then
    return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', true);
  end if;
  -- a NEW event only while the rotation runs (an old rotation's row cannot send a fresh webhook:
  -- review R13 finding 3; its state is read without a lock: at worst one event for a rotation that
  -- is just finishing) and the deployment runs its agent (set_state's end states put a `rotating`
  -- deployment back to `ready`; `rotating` here is another operation's swap)
  if v_rot.state <> 'running' then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'rotation_id: %s is not a running rotation of this organisation that rolled deployment %s back unverified',
      p_rotation_id, p_deployment_id);
  end if;
  if v_dep.status not in ('ready', 'rotating') then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'deployment_id: deployment %s is %s; a health event is for a deployment that runs its agent', p_deployment_id, v_dep.status);
  end if;
  -- the event and its deliveries (20261205100000_health_events.sql)
  select * into v_event from public.deployment_events__append_health(p_deployment_id, v_dep.org_id,
    pg_catalog.jsonb_build_object(
      'state', 'unhealthy',
      'operation', 'rotate',
      'reason_code', p_reason_code,
      'rotation_id', p_rotation_id));
  if v_event.id is null then
    -- the unique index found an event of this (deployment, rotation) the lookup above did not
    -- see. Under REPEATABLE READ or SERIALIZABLE the insert raises 40001 instead (the other event
    -- is not in this transaction's snapshot), and the caller's retry finds it above; under READ
    -- COMMITTED the deployment's row lock already orders two calls, so this is a safeguard: the
    -- other transaction has committed, a new statement sees its event. Looked up by the index's
    -- key alone: the event that holds it
    select * into v_event from public.deployment_events x
    where x.deployment_id = p_deployment_id and x.kind = 'health'
      and x.payload ->> 'rotation_id' = p_rotation_id::text
    order by x.id limit 1;
    if not found then
      raise exception using errcode = '40001', message = pg_catalog.format(
        'rotation_id: a concurrent health event of deployment %s is not visible yet; retry', p_deployment_id);
    end if;
    return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', true);
  end if;
  return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', false);
end
$$;

revoke all on function public.deployment_events__record_rotation_health(uuid, uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.deployment_events__record_rotation_health(uuid, uuid, text) to cortex_orchestrator;
