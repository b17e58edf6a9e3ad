-- Requests audited when they are accepted (issues 10 and 11): revoking a key and deleting a
-- deployment are queued for a worker, whose own audit rows name the actor 'orchestrator'. The
-- row written here, in the organisation's chain and in the transaction that accepts the request,
-- names who asked (the API token `token:<id>`, or the CLI's actor), the address, the user agent
-- and the job the request queued. Its operation is `request` (the change itself is audited by the
-- job as `revoke`/`delete`, so counting those rows still counts changes); the reason says which.
-- Same rules as the rest of the contract: security definer, `search_path = pg_catalog, pg_temp`,
-- executable by cortex_orchestrator only, errors '<field>: <what is wrong>' (22023) that never
-- quote a value; another organisation's secret reads as absent (P0002).

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The new check only widens the old one, which every existing row passes, so validating it cannot
-- fail; NOT VALID + VALIDATE in a later file would leave the audit log with no operation check at
-- all in between (as in 20261201120000_rotation.sql).
alter table public.secret_access_log drop constraint secret_access_log_operation_check;
-- squawk-ignore constraint-missing-not-valid
alter table public.secret_access_log add constraint secret_access_log_operation_check check (operation in
  ('create', 'read', 'rotate', 'revoke', 'delete', 'bind', 'unbind', 'retention', 'policy', 'request'));

-- A revoke accepted: the secret must exist (and be p_org_id's, for an org-scoped caller), and, for
-- one deployment, be bound to it. Nothing changes but the audit log; the job does the revoking.
create function public.secrets__request_revoke(
  p_secret_id uuid, p_deployment_id uuid default null, p_org_id uuid default null,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
  v_id bigint;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('actor', p_actor);
  perform public.input__check_required('secret_id', p_secret_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id;
  if not found or v_secret.org_id <> coalesce(p_org_id, v_secret.org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  if p_deployment_id is not null and not exists (
    select 1 from public.deployment_secrets b where b.secret_id = p_secret_id and b.deployment_id = p_deployment_id
  ) then
    raise exception using errcode = 'P0002',
      message = pg_catalog.format('secret %s is not bound to deployment %s', p_secret_id, p_deployment_id);
  end if;
  v_id := public.secret_access_log__append('request', 'success', v_secret.org_id,
    coalesce(p_deployment_id, v_secret.deployment_id), p_secret_id, null,
    case when p_deployment_id is null then 'revoke requested: every deployment and the vault'
         else 'revoke requested: one deployment' end,
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object('audit_id', v_id, 'org_id', v_secret.org_id);
end
$$;

-- A deprovision accepted: deployments__request_deprovision and its audit row in one transaction
-- (the deployment's lock first, the chain head last). A deployment already deleted queues no job:
-- its row names none.
create function public.deployments__request_deprovision_audited(
  p_deployment_id uuid,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v jsonb;
  v_was_deleted boolean;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('actor', p_actor);
  v_was_deleted := (public.deployments__lock(p_deployment_id)).status = 'deleted';
  v := public.deployments__request_deprovision(p_deployment_id);
  perform public.secret_access_log__append('request', 'success', (v ->> 'org_id')::uuid, p_deployment_id, null, null,
    case when v_was_deleted then 'deprovision requested: already deleted' else 'deprovision requested' end,
    p_actor, case when v_was_deleted then null else p_job_id end, p_request_ip, p_user_agent);
  return v;
end
$$;

do $$
declare
  f text;
begin
  foreach f in array array[
    'public.secrets__request_revoke(uuid, uuid, uuid, text, text, inet, text)',
    'public.deployments__request_deprovision_audited(uuid, text, text, inet, text)'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute pg_catalog.format('grant execute on function %s to cortex_orchestrator', f);
  end loop;
end
$$;
