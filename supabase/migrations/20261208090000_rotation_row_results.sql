-- The rotate job's per-deployment calls return that deployment's row, not the whole rotation
-- (issue 11; the previous stop's note, "hot-path cost").
--
-- Before: secret_rotation_deployments__set_state returned secret_rotations__json, the rotation with
-- every deployment's row, and the job's re-read of its own row under the lease (review R23 finding
-- 1) used secret_rotations__get, the same document. A rotation over N bound deployments records
-- 3-4 of them per deployment, so it built and sent O(N²) rows in all, and each set_state built its
-- N-row document while holding the rotation's row lock (`for update`, below), which every other
-- set_state of that rotation waits for. Measured on the dev database: a 2,000-element jsonb_agg of
-- these rows takes ~100 ms, so a rotation of 2,000 deployments would spend minutes serialised on
-- that lock. The job used none of the returned document.
--
-- Now:
-- - secret_rotation_deployments__json(rotation, deployment): one row as JSON (internal helper, no
--   grant), the same keys as an element of secret_rotations__json's `deployments`, plus
--   `rotation_id`, `rotation_state`, `to_version`.
-- - secret_rotation_deployments__get(rotation, deployment): that row, for the rotate job's re-read
--   under the lease; cortex_orchestrator only. P0002 for a rotation that does not exist; SQL null
--   for a deployment that is not (or no longer) in it: a removed deployment's row goes with it
--   (on delete cascade), and the job leaves that deployment, as it did when the row was missing
--   from secret_rotations__get's list. No org scope: the API shows rotations through
--   secret_rotations__get, which keeps it.
-- - set_state returns that one row. Copied from its latest definition
--   (20261207090000_rotation_failed_health.sql) with only its two `return`s changed. Same
--   signature, security definer, search_path and grants (re-stated below).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create function public.secret_rotation_deployments__json(p_rotation_id uuid, p_deployment_id uuid)
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.jsonb_build_object(
    'rotation_id', r.id, 'rotation_state', r.state, 'to_version', r.to_version,
    'deployment_id', rd.deployment_id, 'from_version', rd.from_version, 'state', rd.state,
    'reason', rd.reason, 'swap_mode', rd.swap_mode, 'updated_at', rd.updated_at)
  from public.secret_rotation_deployments rd
  join public.secret_rotations r on r.id = rd.rotation_id
  where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id
$$;
revoke all on function public.secret_rotation_deployments__json(uuid, uuid) from public, anon, authenticated, service_role;

create function public.secret_rotation_deployments__get(p_rotation_id uuid, p_deployment_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('rotation_id', p_rotation_id);
  perform public.input__check_required('deployment_id', p_deployment_id);
  if not exists (select 1 from public.secret_rotations r where r.id = p_rotation_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('rotation %s not found', p_rotation_id);
  end if;
  return public.secret_rotation_deployments__json(p_rotation_id, p_deployment_id);
end
$$;
revoke all on function public.secret_rotation_deployments__get(uuid, uuid) from public, anon, authenticated, service_role;
grant execute on function public.secret_rotation_deployments__get(uuid, uuid) to cortex_orchestrator;

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
  v_org uuid;
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
    return public.secret_rotation_deployments__json(p_rotation_id, p_deployment_id); -- a retry repeating a recorded end state
  end if;
  if v_rot.state <> 'running' then
    raise exception using errcode = '22023', message = pg_catalog.format('rotation_id: rotation %s is %s', p_rotation_id, v_rot.state);
  end if;
  if not (v_row.state = 'pending' and p_state in ('switching', 'skipped', 'failed'))
     and not (v_row.state = 'switching' and p_state in ('switching', 'switched', 'rolled_back', 'failed')) then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'state: cannot change from %s to %s', v_row.state, p_state);
  end if;

  select d.status, d.org_id into v_status, v_org from public.deployments d where d.id = p_deployment_id for update;
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
    if ((p_state = 'rolled_back' and p_reason = 'unhealthy_rollback_unverified')
        or (p_state = 'switched' and p_reason = 'unhealthy_switch_unverified'))
       and v_status in ('ready', 'rotating') then
      update public.secret_rotation_deployments rd set state = p_state, reason = p_reason
      where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id;
      perform public.deployment_events__record_rotation_health(p_deployment_id, p_rotation_id,
        case p_state when 'rolled_back' then 'rollback_unverified' else 'switch_unverified' end);
    end if;
    -- A `failed` after the swap began (the row was `switching`; review R16 finding 4): a swap that
    -- threw or was cut leaves the host on the old environment or the new one, not known which, and
    -- maybe not serving, while the binding is pinned to the old version below. A health event with
    -- codes only (the record's reason, the error's code, stays in the rotation's record), written
    -- here alone (see the header), under the deployment's row lock taken above; the rotation is
    -- running (checked above, locked). A conflict on the (deployment, rotation) index writes nothing.
    if p_state = 'failed' and v_row.state = 'switching' and v_status in ('ready', 'rotating') then
      perform public.deployment_events__append_health(p_deployment_id, v_org,
        pg_catalog.jsonb_build_object(
          'state', 'unknown',
          'operation', 'rotate',
          'reason_code', 'rotation_failed',
          'rotation_id', p_rotation_id));
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
  return public.secret_rotation_deployments__json(p_rotation_id, p_deployment_id);
end
$$;

revoke all on function public.secret_rotation_deployments__set_state(uuid, uuid, text, text, text, text, text, inet, text)
  from public, anon, authenticated, service_role;
grant execute on function public.secret_rotation_deployments__set_state(uuid, uuid, text, text, text, text, text, inet, text)
  to cortex_orchestrator;
