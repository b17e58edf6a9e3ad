-- Review R16 finding 4 (issue 11): a rotation's last attempt that records a deployment `failed`
-- after its swap began (the row was `switching`: a swap may have run, cut or thrown, its own or a
-- swap back to the old key) pins the binding to the old version, although a thrown swap means "not
-- known": the host may run the old environment or the new one, and may not be serving. Until now
-- only the rotation's record and the worker's log said so; the organisation's webhooks and event
-- stream said nothing.
--
-- Now such a `failed` gets a `health` event too, reason code `rotation_failed`, with
-- `"state": "unknown"` (the two other rotation codes say `unhealthy`: what the host runs is known
-- there, here it is not):
--   * deployment_events__record_rotation_health accepts `rotation_failed` (an allow-list of three)
--     for a deployment the rotation recorded `failed` (with any reason: the reason is the error's
--     code). Everything else as before (a NEW event only while the rotation runs and the deployment
--     runs its agent; one per (rotation, deployment), found again as `existing`).
--   * secret_rotation_deployments__set_state writes it in the same transaction as the `failed`
--     record of a row that was `switching`, before the deployment goes back to `ready`, as it does
--     for the two unverified codes. A `failed` from `pending` (the deployment was not running its
--     agent, or its swap never began) gets none.
-- Both are copied from their latest definitions (20261206100000_rotation_switch_unverified.sql)
-- with only these changes. Same signatures, security definer, search_path and grants (re-stated
-- below).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

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
  v_state text;
  v_reason text;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  perform public.input__check_required('rotation_id', p_rotation_id);
  perform public.input__check_required('reason_code', p_reason_code);
  -- an allow-list, not a pattern: events are read by org members and sent to third parties
  if p_reason_code not in ('rollback_unverified', 'switch_unverified', 'rotation_failed') then
    raise exception using errcode = '22023', message = 'reason_code: must be rollback_unverified, switch_unverified or rotation_failed';
  end if;
  -- the rotation's record of the deployment that each code requires: routed back to the old
  -- environment, not verified; or left on the new one, found serving it, not verified either way
  -- (review R14 finding 4)
  if p_reason_code = 'rollback_unverified' then
    v_state := 'rolled_back';
    v_reason := 'unhealthy_rollback_unverified';
  elsif p_reason_code = 'switch_unverified' then
    v_state := 'switched';
    v_reason := 'unhealthy_switch_unverified';
  else
    -- failed with any reason (the error's code; review R16 finding 4)
    v_state := 'failed';
    v_reason := null;
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
                      and rd.state = v_state and (v_reason is null or rd.reason = v_reason)) then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'rotation_id: %s is not a running rotation of this organisation that recorded deployment %s %s (%s)',
      p_rotation_id, p_deployment_id, v_state, coalesce(v_reason, 'any reason'));
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
      'rotation_id: %s is not a running rotation of this organisation that recorded deployment %s %s (%s)',
      p_rotation_id, p_deployment_id, v_state, coalesce(v_reason, 'any reason'));
  end if;
  if v_dep.status not in ('ready', 'rotating') then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'deployment_id: deployment %s is %s; a health event is for a deployment that runs its agent', p_deployment_id, v_dep.status);
  end if;
  -- the event and its deliveries (20261205100000_health_events.sql)
  select * into v_event from public.deployment_events__append_health(p_deployment_id, v_dep.org_id,
    pg_catalog.jsonb_build_object(
      -- a failed swap: what the host runs is not known (review R16 finding 4)
      'state', case p_reason_code when 'rotation_failed' then 'unknown' else 'unhealthy' end,
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

create or replace function public.secret_rotation_deployments__set_state(
  p_rotation_id uuid, p_deployment_id uuid, p_state text, p_reason text default null, p_swap_mode text default null,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_rot public.secret_rotations%rowtype;
  v_row public.secret_rotation_deployments%rowtype;
  v_status text;
  v_current integer;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('rotation_id', p_rotation_id);
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_state is null or p_state not in ('switching', 'switched', 'rolled_back', 'failed', 'skipped') then
    raise exception using errcode = '22023',
      message = 'state: must be one of switching, switched, rolled_back, failed, skipped';
  end if;
  if p_reason is not null then
    perform public.input__check_text('reason', p_reason, 200);
  end if;
  if p_swap_mode is not null and p_swap_mode not in ('blue-green', 'held-restart') then
    raise exception using errcode = '22023', message = 'swap_mode: must be blue-green or held-restart';
  end if;
  select * into v_rot from public.secret_rotations r where r.id = p_rotation_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('rotation %s not found', p_rotation_id);
  end if;
  select * into v_row from public.secret_rotation_deployments rd
  where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format(
      'deployment %s is not part of rotation %s', p_deployment_id, p_rotation_id);
  end if;
  if v_row.state = p_state and p_state <> 'switching' then
    return public.secret_rotations__json(p_rotation_id); -- a retry repeating a recorded end state
  end if;
  if v_rot.state <> 'running' then
    raise exception using errcode = '22023', message = pg_catalog.format('rotation_id: rotation %s is %s', p_rotation_id, v_rot.state);
  end if;
  if not (v_row.state = 'pending' and p_state in ('switching', 'skipped', 'failed'))
     and not (v_row.state = 'switching' and p_state in ('switching', 'switched', 'rolled_back', 'failed')) then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'state: cannot change from %s to %s', v_row.state, p_state);
  end if;

  select d.status into v_status from public.deployments d where d.id = p_deployment_id for update;
  -- `skipped` is for a deployment that runs no agent: one that does (ready, or rotating under
  -- another job) runs the old version, which `skipped` would let be retired under it.
  if p_state = 'skipped' and v_status in ('ready', 'rotating') then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'state: deployment %s is %s (it runs its agent); skipped is only for one that does not', p_deployment_id, v_status);
  end if;
  if p_state = 'switching' then
    if v_status = 'ready' then
      update public.deployments d set status = 'rotating', progress_at = pg_catalog.now() where d.id = p_deployment_id;
    elsif v_status = 'rotating' then
      update public.deployments d set progress_at = pg_catalog.now() where d.id = p_deployment_id;
    else
      raise exception using errcode = '22023', message = pg_catalog.format(
        'deployment_id: deployment %s is %s; only a ready deployment is switched', p_deployment_id, v_status);
    end if;
  else
    -- A rollback not verified (routed back, but the old environment did not answer through Caddy),
    -- or a switch not verified (the host found on the new environment, which did not answer through
    -- Caddy, and the swap back not healthy either: review R14 finding 4): the row first, then its
    -- health event (deployment_events__record_rotation_health, whose guard reads that row), both
    -- before the status goes back to `ready` below and in this transaction: a stream that ends at
    -- that `ready` has the event before it, and no crash between the record and the event can lose
    -- the event (review R13 finding 1).
    -- And (review R16 finding 4) a `failed` after the swap began (the row was `switching`): a swap
    -- that threw or was cut leaves the host on the old environment or the new one, not known which,
    -- and maybe not serving; the binding is pinned to the old version all the same.
    if ((p_state = 'rolled_back' and p_reason = 'unhealthy_rollback_unverified')
        or (p_state = 'switched' and p_reason = 'unhealthy_switch_unverified')
        or (p_state = 'failed' and v_row.state = 'switching'))
       and v_status in ('ready', 'rotating') then
      update public.secret_rotation_deployments rd set state = p_state, reason = p_reason
      where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id;
      perform public.deployment_events__record_rotation_health(p_deployment_id, p_rotation_id,
        case p_state when 'rolled_back' then 'rollback_unverified' when 'switched' then 'switch_unverified'
          else 'rotation_failed' end);
    end if;
    if v_status = 'rotating' then
      update public.deployments d set status = 'ready', progress_at = pg_catalog.now() where d.id = p_deployment_id;
    end if;
    select s.current_version into v_current from public.secrets s where s.id = v_rot.secret_id;
    if p_state = 'switched' then
      perform public.deployment_secrets__move(p_deployment_id, v_rot.secret_id,
        case when v_current = v_rot.to_version then null else v_rot.to_version end,
        pg_catalog.format('rotation %s: switched', p_rotation_id), p_actor, p_job_id, p_request_ip, p_user_agent);
    elsif p_state in ('rolled_back', 'failed') then
      perform public.deployment_secrets__move(p_deployment_id, v_rot.secret_id,
        case when v_current = v_row.from_version then null else v_row.from_version end,
        pg_catalog.format('rotation %s: %s%s', p_rotation_id, pg_catalog.replace(p_state, '_', ' '),
          coalesce(' (' || p_reason || ')', '')),
        p_actor, p_job_id, p_request_ip, p_user_agent);
    elsif p_state = 'skipped' and exists (
      select 1 from public.deployment_secrets b
      where b.deployment_id = p_deployment_id and b.secret_id = v_rot.secret_id and b.version is not null) then
      -- A pin an earlier rotation left (a host it could not reach) is dropped: the deployment's next
      -- `secrets` step reads the current version, not that old one back onto its host.
      perform public.deployment_secrets__move(p_deployment_id, v_rot.secret_id, null,
        pg_catalog.format('rotation %s: skipped%s', p_rotation_id, coalesce(' (' || p_reason || ')', '')),
        p_actor, p_job_id, p_request_ip, p_user_agent);
    end if;
  end if;

  update public.secret_rotation_deployments rd
  set state = p_state, reason = p_reason, swap_mode = coalesce(p_swap_mode, rd.swap_mode), updated_at = pg_catalog.now()
  where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id;
  update public.secret_rotations r set updated_at = pg_catalog.now() where r.id = p_rotation_id;
  return public.secret_rotations__json(p_rotation_id);
end
$$;

revoke all on function public.secret_rotation_deployments__set_state(uuid, uuid, text, text, text, text, text, inet, text)
  from public, anon, authenticated, service_role;
grant execute on function public.secret_rotation_deployments__set_state(uuid, uuid, text, text, text, text, text, inet, text)
  to cortex_orchestrator;
