-- Review R13 finding 1 (issue 11): a rollback not verified recorded its health event
-- (20261205120000_rotation_health_events.sql) in a call of its own AFTER the `rolled_back` record,
-- which had already put the deployment back to `ready`. A worker that died between the two (or a
-- lost answer to the record, whose retry skips a final row) lost the event for good, and a client
-- following the deployment's event stream got `ready`, and the stream's end, before it.
--
-- Now secret_rotation_deployments__set_state writes it itself, in the same transaction: for
-- `rolled_back` with reason `unhealthy_rollback_unverified` on a deployment that runs its agent,
-- the row is updated first, then the event is recorded (its guard reads the row), then the status
-- goes back to `ready`. The job's own call afterwards finds it (`existing`). Same signature, same
-- rules otherwise (20261204090000_rotation_skipped.sql): the grants stay (re-stated below).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

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
    -- A rollback not verified (routed back, but the old environment did not answer through Caddy):
    -- the row first, then its health event (deployment_events__record_rotation_health, whose guard
    -- reads that row), both before the status goes back to `ready` below and in this transaction:
    -- a stream that ends at that `ready` has the event before it, and no crash between the record
    -- and the event can lose the event (review R13 finding 1).
    if p_state = 'rolled_back' and p_reason = 'unhealthy_rollback_unverified' and v_status in ('ready', 'rotating') then
      update public.secret_rotation_deployments rd set state = p_state, reason = p_reason
      where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id;
      perform public.deployment_events__record_rotation_health(p_deployment_id, p_rotation_id, 'rollback_unverified');
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
