-- Review R8 finding 5 (issue 11): a deployment whose agent the revoke job restarted without the
-- revoked key, and kept so although it is not healthy (`kept_unhealthy`), went back to `ready`
-- with nothing in its event stream or the organisation's webhooks to say so (only the revocation's
-- record and the worker's log did). Now the job records a `health` event for it: one row in
-- deployment_events (kind 'health'), and one webhook delivery per active endpoint of the
-- organisation, as a status change gets (20261201110000_deployment_events_and_webhooks.sql).
--
-- The payload holds only words the orchestrator chose, as every event does (org members read
-- events; webhooks send them to third-party URLs): a state, the operation, a reason CODE from an
-- allow-list (no free text) and the revocation's id.
--
-- Who may record one: cortex_orchestrator only, and only under an open revocation of a secret
-- still bound to that deployment (the job records the event before it removes the binding), of the
-- deployment's own organisation, for the deployment itself or the whole secret: a holder of the
-- orchestrator's role cannot make an unrelated deployment's customers see a made-up health event.
-- Idempotent per (revocation, deployment): a retried job sends no second webhook.
--
-- Same rules as the rest of the contract: security definer, `search_path = pg_catalog, pg_temp`,
-- fully qualified names, EXECUTE for cortex_orchestrator only, errors '<field>: <what is wrong>'
-- (22023) that never quote a value; a missing deployment is P0002.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The kind check widened. The old check is dropped and the new one added NOT VALID in this one
-- transaction: no moment without a check (a NOT VALID check holds for every row written from now
-- on), and no scan of the event log under the ACCESS EXCLUSIVE lock the ALTER takes (deployment
-- events are written by every step of every provision). Existing rows passed the narrower check;
-- 20261205100100_health_events_validate.sql validates it under a lock that lets writes go on.
alter table public.deployment_events drop constraint deployment_events_kind_check;
alter table public.deployment_events add constraint deployment_events_kind_check
  check (kind in ('status', 'step', 'health')) not valid;

-- Internal (no role may call it): a `health` event of a deployment and one webhook delivery per
-- active endpoint of its organisation, as deployment_events__on_status writes a status event's.
-- Its callers (deployment_events__record_health, __record_rotation_health) decide who may record
-- what, and hold the deployment's row lock. Runs as its caller (security invoker): only security
-- definer functions of the contract reach it.
create function public.deployment_events__append_health(p_deployment_id uuid, p_org_id uuid, p_payload jsonb)
returns public.deployment_events
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event public.deployment_events%rowtype;
begin
  insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (p_deployment_id, p_org_id, 'health', p_payload)
  returning * into v_event;
  insert into public.webhook_deliveries (endpoint_id, event_id, org_id)
  select e.id, v_event.id, p_org_id
  from public.webhook_endpoints e
  where e.org_id = p_org_id and e.disabled_at is null
  order by e.id;
  return v_event;
end
$$;
revoke all on function public.deployment_events__append_health(uuid, uuid, jsonb) from public, anon, authenticated, service_role;

-- A deployment's agent is running but not healthy, and stays so: recorded by the operation that
-- left it so. Today one operation and one reason: the revoke job restarted the agent without the
-- revoked key and kept it running unhealthy (`kept_unhealthy`, orchestrator/rotation/revoke-job.ts).
-- Returns the event (deployment_events__json) and `existing`: true when this revocation already
-- recorded it for this deployment (nothing new written, no second delivery).
create function public.deployment_events__record_health(
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
  return public.deployment_events__json(v_event) || pg_catalog.jsonb_build_object('existing', false);
end
$$;

revoke all on function public.deployment_events__record_health(uuid, uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.deployment_events__record_health(uuid, uuid, text) to cortex_orchestrator;
