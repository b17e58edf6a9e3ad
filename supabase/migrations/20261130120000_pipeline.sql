-- The provisioning pipeline's part of the contract: a deployment requested with its bindings in one
-- call, the host it got (server, addresses, DNS name, the pinned host key and a pending one while
-- the host is re-keyed), step progress in deployment_steps (the record a retry resumes from), and
-- the reads the reconciler and the orphan sweep need. Same rules as the rest of the contract:
-- security definer, `search_path = pg_catalog, pg_temp`, fully qualified names, executable by the
-- orchestrator's own role only, errors as '<field>: <what is wrong>' (22023) that never quote a value.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- ---- columns ------------------------------------------------------------------------------------

alter table public.deployments
  add column runtime text not null default 'echo' check (runtime in ('echo', 'openclaw')),
  add column dns_name text check (pg_catalog.char_length(dns_name) <= 253),
  -- re-keying: the new key is recorded here before it is installed; either key (and no other) is
  -- accepted until a fresh connection has proven the new one, then it replaces host_public_key
  add column host_public_key_pending text,
  add column host_rekeyed_at timestamptz,
  -- the operation in progress ('provision' | 'deprovision') and its run number in deployment_steps
  add column current_operation text check (current_operation in ('provision', 'deprovision')),
  add column current_run integer not null default 0 check (current_run >= 0),
  add column failed_step text,
  add column failure_reason text check (pg_catalog.char_length(failure_reason) <= 500),
  -- last sign of life of the operation in progress: the reconciler re-enqueues what stopped moving
  add column progress_at timestamptz not null default now(),
  -- the fencing token of the run that holds the operation (see deployments__begin)
  add column operation_token text check (pg_catalog.char_length(operation_token) <= 100);

-- Not CONCURRENTLY: deployments comes from 20261125211500 of the same first deploy (no hosted
-- database holds these tables yet), and a file runs in one transaction, where CONCURRENTLY cannot.
-- squawk-ignore require-concurrent-index-creation
create index deployments_progress_idx on public.deployments (progress_at)
  where status in ('requested', 'provisioning', 'rotating', 'deprovisioning');

alter table public.deployment_steps
  add column operation text not null default 'provision' check (operation in ('provision', 'deprovision')),
  add column attempt integer not null default 1 check (attempt >= 1),
  add column duration_ms integer check (duration_ms >= 0);

-- ---- helpers (internal) -------------------------------------------------------------------------

create function public.deployments__json(p_id uuid)
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.to_jsonb(d) || pg_catalog.jsonb_build_object(
    'ipv4', pg_catalog.host(d.ipv4), 'ipv6', pg_catalog.host(d.ipv6),
    'steps', coalesce((
      select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'run', s.run, 'operation', s.operation, 'step', s.step, 'status', s.status, 'attempt', s.attempt,
        'started_at', s.started_at, 'finished_at', s.finished_at, 'duration_ms', s.duration_ms, 'error', s.error)
        order by s.run, s.started_at nulls last, s.step)
      from public.deployment_steps s where s.deployment_id = d.id), '[]'::jsonb))
  from public.deployments d where d.id = p_id
$$;
revoke all on function public.deployments__json(uuid) from public, anon, authenticated, service_role;

create function public.deployments__lock(p_deployment_id uuid)
returns public.deployments
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.deployments%rowtype;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  select * into v_row from public.deployments d where d.id = p_deployment_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  return v_row;
end
$$;
revoke all on function public.deployments__lock(uuid) from public, anon, authenticated, service_role;

-- ---- request: the deployment and its bindings in one transaction ----------------------------------

-- Bindings: a JSON array of {"env_var": "...", "secret_id": "<uuid>"} (at most 100, names unique).
-- A secret that does not exist, or belongs to another organisation, is a denial returned as a value
-- ({"status":"denied","field":…}) so that its audit row (in the requesting organisation's chain,
-- naming no secret id) commits, and nothing else is created: the same answer for "not there" and
-- "not yours", so a caller learns nothing about other organisations' ids.
create function public.deployments__request(
  p_org_id uuid,
  p_name text,
  p_subdomain text,
  p_provider text default 'local',
  p_region text default null,
  p_server_type text default null,
  p_runtime text default 'echo',
  p_bindings jsonb default '[]'::jsonb,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_dep jsonb;
  v_id uuid;
  v_b jsonb;
  v_i integer := 0;
  v_env text;
  v_secret_id uuid;
  v_names text[] := array[]::text[];
  v_owner uuid;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('org_id', p_org_id);
  if p_runtime is null or p_runtime not in ('echo', 'openclaw') then
    raise exception using errcode = '22023', message = 'runtime: must be echo or openclaw';
  end if;
  -- the direct adapter sends JSON text (node-postgres turns a JS array into a Postgres array);
  -- PostgREST may hand the same text over as a JSON string: accept it once, parsed
  if pg_catalog.jsonb_typeof(p_bindings) = 'string' then
    begin
      p_bindings := (p_bindings #>> '{}')::jsonb;
    exception when others then
      raise exception using errcode = '22023', message = 'bindings: must be an array of {env_var, secret_id}';
    end;
  end if;
  if p_bindings is null or pg_catalog.jsonb_typeof(p_bindings) <> 'array' then
    raise exception using errcode = '22023', message = 'bindings: must be an array of {env_var, secret_id}';
  end if;
  if pg_catalog.jsonb_array_length(p_bindings) > 100 then
    raise exception using errcode = '22023', message = 'bindings: at most 100 bindings per deployment';
  end if;
  -- shape first, before anything is written or audited
  for v_b in select e from pg_catalog.jsonb_array_elements(p_bindings) e loop
    if pg_catalog.jsonb_typeof(v_b) <> 'object'
       or (select pg_catalog.count(*) from pg_catalog.jsonb_object_keys(v_b) k where k not in ('env_var', 'secret_id')) > 0
       or pg_catalog.jsonb_typeof(v_b -> 'env_var') is distinct from 'string'
       or pg_catalog.jsonb_typeof(v_b -> 'secret_id') is distinct from 'string' then
      raise exception using errcode = '22023',
        message = pg_catalog.format('bindings[%s]: must be an object {env_var, secret_id} with string values', v_i);
    end if;
    v_env := v_b ->> 'env_var';
    begin
      perform public.input__check_env_var(v_env);
    exception when invalid_parameter_value then
      raise exception using errcode = '22023',
        message = pg_catalog.format('bindings[%s].env_var: must match ^[A-Z_][A-Z0-9_]*$ (at most 128 characters)', v_i);
    end;
    if (v_b ->> 'secret_id') !~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' then
      raise exception using errcode = '22023', message = pg_catalog.format('bindings[%s].secret_id: must be a uuid', v_i);
    end if;
    if v_env = any (v_names) then
      raise exception using errcode = '22023',
        message = pg_catalog.format('bindings[%s].env_var: bound twice; each variable takes one secret', v_i);
    end if;
    v_names := v_names || v_env;
    v_i := v_i + 1;
  end loop;

  if not exists (select 1 from public.organizations o where o.id = p_org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('organization %s not found', p_org_id);
  end if;
  -- the same rules as the service's (deployments-service.ts): the platform's names and punycode
  if p_subdomain like 'xn--%' then
    raise exception using errcode = '22023', message = 'subdomain: must not be punycode (xn--)';
  end if;
  if p_subdomain = any (array['www', 'api', 'app', 'admin', 'mail', 'smtp', 'imap', 'pop', 'ftp', 'ns', 'ns1',
      'ns2', 'dns', 'status', 'docs', 'help', 'support', 'login', 'auth', 'sso', 'account', 'accounts', 'billing',
      'dashboard', 'console', 'cortex', 'platform', 'root', 'localhost', 'autodiscover', 'autoconfig']) then
    raise exception using errcode = '22023', message = 'subdomain: is reserved for the platform; choose another';
  end if;
  if p_name ~ '[\u0080-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]' then
    raise exception using errcode = '22023', message = 'name: must not contain control or bidirectional formatting characters';
  end if;

  -- entitlement before any write: every secret exists, is this organisation's, org-wide and active
  v_i := 0;
  for v_b in select e from pg_catalog.jsonb_array_elements(p_bindings) e loop
    v_secret_id := (v_b ->> 'secret_id')::uuid;
    if not exists (
      select 1 from public.secrets s
      where s.id = v_secret_id and s.org_id = p_org_id and s.deployment_id is null and s.status = 'active'
    ) then
      perform public.secret_access_log__append('bind', 'denied', p_org_id, null, null, null,
        pg_catalog.format('deployment request refused: bindings[%s] names no active org-wide secret of this organization', v_i),
        p_actor, p_job_id, p_request_ip, p_user_agent);
      -- the owner, if another organisation owns that id, learns its secret was asked for, and
      -- nothing about who asked (no org, deployment, actor or address of the requester)
      v_owner := (select s.org_id from public.secrets s where s.id = v_secret_id);
      if v_owner is not null and v_owner <> p_org_id then
        perform public.secret_access_log__append('bind', 'denied', v_owner, null, v_secret_id, null,
          'bind refused: another organization named this secret in a deployment request', null, null, null, null);
      end if;
      return pg_catalog.jsonb_build_object('status', 'denied',
        'field', pg_catalog.format('bindings[%s].secret_id', v_i),
        'reason', 'no active secret with this id in the organization');
    end if;
    v_i := v_i + 1;
  end loop;

  v_dep := public.deployments__create(p_org_id, p_name, p_subdomain, p_provider, p_region, p_server_type);
  v_id := (v_dep ->> 'id')::uuid;
  update public.deployments d set runtime = p_runtime where d.id = v_id;
  for v_b in select e from pg_catalog.jsonb_array_elements(p_bindings) e loop
    perform public.deployment_secrets__bind(v_id, v_b ->> 'env_var', (v_b ->> 'secret_id')::uuid,
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('status', 'ok', 'deployment', public.deployments__json(v_id));
end
$$;

-- ---- reads --------------------------------------------------------------------------------------

create function public.deployments__describe(p_deployment_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v jsonb;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  v := public.deployments__json(p_deployment_id);
  if v is null then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  return v;
end
$$;

create function public.deployments__list(
  p_org_id uuid default null,
  p_include_deleted boolean default false,
  p_limit integer default 100
) returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception using errcode = '22023', message = 'limit: must be between 1 and 1000';
  end if;
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'id', d.id, 'org_id', d.org_id, 'name', d.name, 'subdomain', d.subdomain, 'provider', d.provider,
      'runtime', d.runtime, 'status', d.status, 'dns_name', d.dns_name, 'ipv4', pg_catalog.host(d.ipv4),
      'failed_step', d.failed_step, 'created_at', d.created_at, 'updated_at', d.updated_at) order by d.created_at desc)
    from (
      select * from public.deployments d
      where (p_org_id is null or d.org_id = p_org_id) and (p_include_deleted or d.status <> 'deleted')
      order by d.created_at desc limit p_limit
    ) d), '[]'::jsonb);
end
$$;

-- Deployments outside a final state whose operation has shown no progress for p_idle_seconds: the
-- reconciler re-enqueues them (a flushed Redis, a job lost with its worker); ops may scope a pass
-- to one organisation.
create function public.deployments__list_stalled(p_idle_seconds integer, p_org_id uuid default null)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_idle_seconds is null or p_idle_seconds < 0 or p_idle_seconds > 86400 * 30 then
    raise exception using errcode = '22023', message = 'idle_seconds: must be between 0 and 2592000';
  end if;
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', d.id, 'status', d.status) order by d.progress_at)
    from public.deployments d
    where d.status in ('requested', 'provisioning', 'rotating', 'deprovisioning')
      and d.progress_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_idle_seconds)
      and (p_org_id is null or d.org_id = p_org_id)
  ), '[]'::jsonb);
end
$$;

-- Of the given ids (hosts a provider reports), those that belong to no live deployment.
create function public.deployments__unowned(p_ids uuid[])
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_ids is null or pg_catalog.cardinality(p_ids) > 10000 then
    raise exception using errcode = '22023', message = 'ids: must be an array of at most 10000 uuids';
  end if;
  return coalesce((
    select pg_catalog.jsonb_agg(i.id order by i.id)
    from pg_catalog.unnest(p_ids) as i(id)
    where not exists (select 1 from public.deployments d where d.id = i.id and d.status <> 'deleted')
  ), '[]'::jsonb);
end
$$;

-- ---- operations and steps -------------------------------------------------------------------------

-- A fencing token: a short opaque string (a uuid in practice), or null for no fencing.
create function public.deployment_steps__check_token(p_token text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_token is not null and p_token !~ '^[A-Za-z0-9_-]{8,100}$' then
    raise exception using errcode = '22023', message = 'token: must be 8-100 letters, digits, "_" or "-"';
  end if;
end
$$;
revoke all on function public.deployment_steps__check_token(text) from public, anon, authenticated, service_role;

-- Refuse a write from a run that no longer holds the operation (another run began since).
create function public.deployments__fence(p_row public.deployments, p_token text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_token is not null and p_row.operation_token is distinct from p_token then
    raise exception using errcode = '55006',
      message = pg_catalog.format('token: another worker has taken over the operation on deployment %s', p_row.id);
  end if;
end
$$;
revoke all on function public.deployments__fence(public.deployments, text) from public, anon, authenticated, service_role;

-- Start (or resume) an operation. provision: requested → provisioning (run 1), failed → provisioning
-- (same run: the retry resumes at the step that failed), provisioning → itself (resume after a crash);
-- ready → nothing to do; deprovisioning/deleted → stop (a deprovision wins). deprovision: only one
-- that deployments__request_deprovision asked for runs (Postgres, not Redis, holds the intent to
-- remove a deployment: a `deprovision` job that reached Redis some other way stops); deleted → done.
-- p_token: this run's fencing token (fresh per job attempt). The newest run takes the operation over;
-- step records and host writes under an older token are refused with 55006 (a worker whose Redis
-- lease vanished in a flush or failover cannot write beside the one that took over).
-- Returns {"action": "run" | "done" | "stop", "run": n, "deployment": …}.
create function public.deployments__begin(p_deployment_id uuid, p_operation text, p_token text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
  v_action text := 'run';
begin
  if p_operation is null or p_operation not in ('provision', 'deprovision') then
    raise exception using errcode = '22023', message = 'operation: must be provision or deprovision';
  end if;
  v := public.deployments__lock(p_deployment_id);
  if p_operation = 'provision' then
    if v.status = 'ready' then
      v_action := 'done';
      -- a worker that died after `ready` took effect and before recording it: the record catches up
      update public.deployment_steps s set status = 'succeeded', finished_at = pg_catalog.clock_timestamp(),
        duration_ms = greatest(0, (extract(epoch from pg_catalog.clock_timestamp() - s.started_at) * 1000)::integer)
       where s.deployment_id = v.id and s.run = v.current_run and s.step = 'ready' and s.status = 'running';
    elsif v.status in ('deprovisioning', 'deleted', 'rotating') then
      v_action := 'stop';
    elsif v.status = 'requested' then
      update public.deployments d set status = 'provisioning', current_operation = 'provision',
        current_run = d.current_run + 1, failed_step = null, failure_reason = null, progress_at = pg_catalog.now()
      where d.id = v.id returning * into v;
    elsif v.status = 'failed' then
      update public.deployments d set status = 'provisioning', current_operation = 'provision',
        failed_step = null, failure_reason = null, progress_at = pg_catalog.now()
      where d.id = v.id returning * into v;
    else -- provisioning: resume
      update public.deployments d set progress_at = pg_catalog.now() where d.id = v.id returning * into v;
    end if;
  else
    if v.status = 'deleted' then
      v_action := 'done';
    elsif v.status = 'deprovisioning' and v.current_operation = 'deprovision' then
      update public.deployments d set progress_at = pg_catalog.now() where d.id = v.id returning * into v;
    else
      -- Only deployments__request_deprovision starts a deprovision: a deprovision job for a
      -- deployment nobody asked to remove (it reached Redis some other way) stops here.
      v_action := 'stop';
    end if;
  end if;
  if v_action = 'run' then
    -- this run of the operation takes it over: writes under any earlier run's token are refused
    perform public.deployment_steps__check_token(p_token);
    update public.deployments d set operation_token = p_token where d.id = v.id returning * into v;
  end if;
  return pg_catalog.jsonb_build_object('action', v_action, 'run', v.current_run,
    'deployment', public.deployments__json(v.id));
end
$$;

-- Ask for deprovisioning now (it wins over a provision in progress, which stops at its next step
-- boundary). Idempotent. Returns the deployment.
create function public.deployments__request_deprovision(p_deployment_id uuid)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
begin
  v := public.deployments__lock(p_deployment_id);
  if v.status not in ('deprovisioning', 'deleted') then
    update public.deployments d set status = 'deprovisioning', current_operation = 'deprovision',
      current_run = d.current_run + 1, progress_at = pg_catalog.now()
    where d.id = v.id;
  end if;
  return public.deployments__json(p_deployment_id);
end
$$;

create function public.deployment_steps__check_step(p_step text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_step is null or p_step !~ '^[a-z][a-z0-9_-]{0,62}$' then
    raise exception using errcode = '22023', message = 'step: must be a step name like host or secrets';
  end if;
end
$$;
revoke all on function public.deployment_steps__check_step(text) from public, anon, authenticated, service_role;

-- A step starts: a row per (run, step) whose attempt counts the starts. Refused unless the
-- deployment is in that operation and run (a stale worker cannot write into a newer run).
create function public.deployment_steps__start(p_deployment_id uuid, p_run integer, p_step text, p_token text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
begin
  perform public.deployment_steps__check_step(p_step);
  v := public.deployments__lock(p_deployment_id);
  perform public.deployments__fence(v, p_token);
  if p_run is distinct from v.current_run then
    raise exception using errcode = '22023',
      message = pg_catalog.format('run: deployment %s is in run %s, not %s', p_deployment_id, v.current_run, p_run);
  end if;
  insert into public.deployment_steps as s (deployment_id, run, step, status, started_at, operation, attempt)
  values (p_deployment_id, p_run, p_step, 'running', pg_catalog.clock_timestamp(), v.current_operation, 1)
  on conflict (deployment_id, run, step) do update
    set status = 'running', started_at = pg_catalog.clock_timestamp(), finished_at = null, error = null,
        duration_ms = null, attempt = s.attempt + 1;
  update public.deployments d set progress_at = pg_catalog.now() where d.id = p_deployment_id;
  return pg_catalog.jsonb_build_object('deployment_id', p_deployment_id, 'run', p_run, 'step', p_step);
end
$$;

-- A step ends: succeeded, skipped (already done), or failed with a reason. A failure of the
-- operation as a whole (p_final) also moves the deployment to `failed` naming the step.
create function public.deployment_steps__finish(
  p_deployment_id uuid,
  p_run integer,
  p_step text,
  p_status text,
  p_reason text default null,
  p_final boolean default false,
  p_token text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
begin
  perform public.deployment_steps__check_step(p_step);
  if p_status is null or p_status not in ('succeeded', 'skipped', 'failed') then
    raise exception using errcode = '22023', message = 'status: must be succeeded, skipped or failed';
  end if;
  if p_reason is not null then
    perform public.input__check_text('reason', p_reason, 500);
  end if;
  v := public.deployments__lock(p_deployment_id);
  perform public.deployments__fence(v, p_token);
  update public.deployment_steps s
     set status = p_status, finished_at = pg_catalog.clock_timestamp(), error = p_reason,
         duration_ms = greatest(0, (extract(epoch from pg_catalog.clock_timestamp() - s.started_at) * 1000)::integer)
   where s.deployment_id = p_deployment_id and s.run = p_run and s.step = p_step and s.status = 'running';
  if not found then
    raise exception using errcode = '22023',
      message = pg_catalog.format('step: %s of run %s is not running', p_step, p_run);
  end if;
  update public.deployments d set progress_at = pg_catalog.now() where d.id = p_deployment_id;
  if p_status = 'failed' and p_final and v.status = 'provisioning' then
    update public.deployments d set status = 'failed', failed_step = p_step, failure_reason = p_reason
    where d.id = p_deployment_id;
  end if;
  return public.deployments__json(p_deployment_id);
end
$$;

-- ---- the host -----------------------------------------------------------------------------------

-- Internal: lock a deployment for a host or DNS record of the run holding p_token; refused unless
-- it is provisioning (what the provider made is recorded only while the operation runs).
create function public.deployments__lock_provisioning(p_deployment_id uuid, p_token text)
returns public.deployments
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
begin
  v := public.deployments__lock(p_deployment_id);
  perform public.deployments__fence(v, p_token);
  if v.status <> 'provisioning' then
    raise exception using errcode = '22023',
      message = pg_catalog.format('deployment_id: deployment %s is %s, not provisioning', p_deployment_id, v.status);
  end if;
  return v;
end
$$;
revoke all on function public.deployments__lock_provisioning(uuid, text) from public, anon, authenticated, service_role;

-- Record the host the provider made. The pinned key is taken only when none is pinned yet: after a
-- re-key the record holds the live key, and the provider's (first-boot) key must not replace it.
create function public.deployments__record_host(
  p_deployment_id uuid,
  p_server_id text,
  p_ipv4 inet,
  p_ipv6 inet default null,
  p_host_public_key text default null,
  p_token text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_text('server_id', p_server_id, 128);
  perform public.input__check_required('ipv4', p_ipv4);
  if pg_catalog.family(p_ipv4) <> 4 then
    raise exception using errcode = '22023', message = 'ipv4: must be an IPv4 address';
  end if;
  if p_ipv6 is not null and pg_catalog.family(p_ipv6) <> 6 then
    raise exception using errcode = '22023', message = 'ipv6: must be an IPv6 address';
  end if;
  if p_host_public_key is not null and p_host_public_key !~ '^ssh-ed25519 [A-Za-z0-9+/]{68}$' then
    raise exception using errcode = '22023', message = 'host_public_key: must be one ssh-ed25519 public key';
  end if;
  perform public.deployments__lock_provisioning(p_deployment_id, p_token);
  update public.deployments d
     set server_id = p_server_id, ipv4 = p_ipv4, ipv6 = p_ipv6,
         host_public_key = coalesce(d.host_public_key, p_host_public_key), updated_at = pg_catalog.now(),
         progress_at = pg_catalog.now()
   where d.id = p_deployment_id;
  return public.deployments__json(p_deployment_id);
end
$$;

create function public.deployments__record_dns(p_deployment_id uuid, p_dns_name text, p_token text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_dns_name is not null and p_dns_name !~ '^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$' then
    raise exception using errcode = '22023', message = 'dns_name: must be a lower-case DNS name';
  end if;
  perform public.deployments__lock_provisioning(p_deployment_id, p_token);
  update public.deployments d set dns_name = p_dns_name, updated_at = pg_catalog.now(), progress_at = pg_catalog.now()
   where d.id = p_deployment_id;
  return public.deployments__json(p_deployment_id);
end
$$;

-- Re-keying, in two moves. 'pending': the new key is recorded before it is installed on the server.
-- 'promote': a fresh connection proved the pending key; it becomes the pinned key. 'clear': the
-- server is gone (deprovisioning): no key, no address stays pinned.
create function public.deployments__host_key(p_deployment_id uuid, p_action text, p_key text default null, p_token text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
begin
  if p_action is null or p_action not in ('pending', 'promote', 'clear') then
    raise exception using errcode = '22023', message = 'action: must be pending, promote or clear';
  end if;
  if p_action <> 'clear' and (p_key is null or p_key !~ '^ssh-ed25519 [A-Za-z0-9+/]{68}$') then
    raise exception using errcode = '22023', message = 'key: must be one ssh-ed25519 public key';
  end if;
  v := public.deployments__lock(p_deployment_id);
  perform public.deployments__fence(v, p_token);
  if p_action = 'pending' then
    if v.host_public_key is null then
      raise exception using errcode = '22023', message = 'key: no host key is pinned yet; record the host first';
    end if;
    update public.deployments d set host_public_key_pending = p_key, progress_at = pg_catalog.now()
     where d.id = p_deployment_id;
  elsif p_action = 'promote' then
    if v.host_public_key_pending is distinct from p_key then
      raise exception using errcode = '22023', message = 'key: is not the pending host key';
    end if;
    update public.deployments d
       set host_public_key = p_key, host_public_key_pending = null, host_rekeyed_at = pg_catalog.now(),
           progress_at = pg_catalog.now()
     where d.id = p_deployment_id;
  else
    if v.status <> 'deprovisioning' then
      raise exception using errcode = '22023', message = 'action: clear is for a deployment being deprovisioned';
    end if;
    update public.deployments d
       set host_public_key = null, host_public_key_pending = null, server_id = null, ipv4 = null, ipv6 = null,
           dns_name = null, progress_at = pg_catalog.now()
     where d.id = p_deployment_id;
  end if;
  return public.deployments__json(p_deployment_id);
end
$$;

-- The audit trail of one deployment, oldest first (what the demo and the API show): rows hold no
-- value, only who, when, which secret and version, what and how it ended.
create function public.deployments__audit(p_deployment_id uuid, p_limit integer default 200)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception using errcode = '22023', message = 'limit: must be between 1 and 10000';
  end if;
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'id', l.id, 'at', l.at, 'org_id', l.org_id, 'secret_id', l.secret_id, 'version', l.version,
      'operation', l.operation, 'outcome', l.outcome, 'actor', l.actor, 'job_id', l.job_id, 'reason', l.reason,
      'seq', l.seq) order by l.id)
    from (select * from public.secret_access_log a where a.deployment_id = p_deployment_id order by a.id limit p_limit) l
  ), '[]'::jsonb);
end
$$;

-- ---- grants -------------------------------------------------------------------------------------

do $$
declare
  f text;
begin
  foreach f in array array[
    'public.deployments__request(uuid, text, text, text, text, text, text, jsonb, text, text, inet, text)',
    'public.deployments__describe(uuid)',
    'public.deployments__list(uuid, boolean, integer)',
    'public.deployments__list_stalled(integer, uuid)',
    'public.deployments__unowned(uuid[])',
    'public.deployments__begin(uuid, text, text)',
    'public.deployments__request_deprovision(uuid)',
    'public.deployment_steps__start(uuid, integer, text, text)',
    'public.deployment_steps__finish(uuid, integer, text, text, text, boolean, text)',
    'public.deployments__record_host(uuid, text, inet, inet, text, text)',
    'public.deployments__record_dns(uuid, text, text)',
    'public.deployments__host_key(uuid, text, text, text)',
    'public.deployments__audit(uuid, integer)'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute pg_catalog.format('grant execute on function %s to cortex_orchestrator', f);
  end loop;
end
$$;
