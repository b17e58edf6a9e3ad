-- A rotation whose swap was not healthy routes the deployment back to its old environment; when
-- the old instance does not answer through Caddy afterwards (or a resumed deployment put back on
-- its old environment is not healthy either), the rotation job records the deployment
-- `rolled_back` with reason `unhealthy_rollback_unverified`: the host has the old environment but
-- may not be serving (docs/rotation.md, "Not covered"). Until now only the rotation's record and
-- the worker's log said so. Now the job also records a `health` event for that deployment, as the
-- revoke job does for `kept_unhealthy` (20261205100000_health_events.sql): one row in
-- deployment_events (kind 'health') and one webhook delivery per active endpoint of the
-- organisation, so the org's webhooks and the event stream say the agent may not be serving.
--
-- The payload holds only words the orchestrator chose: a state, the operation, a reason CODE from
-- an allow-list (no free text) and the rotation's id.
--
-- Who may record one: cortex_orchestrator only, and only for a deployment that a rotation of its
-- own organisation has ALREADY recorded `rolled_back` with reason `unhealthy_rollback_unverified`
-- (secret_rotation_deployments__set_state stores the reason as given; an end state never changes
-- again, so the check cannot go stale): a holder of the orchestrator's role cannot make an
-- unrelated deployment's customers see a made-up health event without first recording a rollback
-- of it in a rotation, which is audited. The rotation must still run (the event is recorded before
-- the rotation finishes: since 20261205130000 by set_state itself), so that an old rotation's row
-- cannot send a fresh webhook today (review R13 finding 3). Idempotent per (rotation, deployment):
-- a repeat sends no second webhook.
--
-- Same rules as the rest of the contract: security definer, `search_path = pg_catalog, pg_temp`,
-- fully qualified names, EXECUTE for cortex_orchestrator only, errors '<field>: <what is wrong>'
-- (22023) that never quote a value; a missing deployment is P0002.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Returns the event (deployment_events__json) and `existing`: true when this rotation already
-- recorded it for this deployment (nothing new written, no second delivery).
create function public.deployment_events__record_rotation_health(
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
  return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', false);
end
$$;

revoke all on function public.deployment_events__record_rotation_health(uuid, uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.deployment_events__record_rotation_health(uuid, uuid, text) to cortex_orchestrator;
