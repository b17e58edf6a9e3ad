-- Key rotation and revocation (issue 11). A rotation adds a version (secrets__add_version) and
-- records, per bound deployment, the version its host ran before (`from_version`) and where the
-- switch stands (pending → switching → switched | rolled_back | failed, or skipped), so a worker
-- that dies mid-rotation leaves a record the retry resumes from, and every deployment ends on its
-- old version or the new one, never a third. A binding may be pinned to a version
-- (deployment_secrets.version; null follows the secret's current version): a rolled-back
-- deployment stays pinned to its old version, which therefore cannot be retired under it.
-- Same rules as the rest of the contract: security definer, `search_path = pg_catalog, pg_temp`,
-- fully qualified names, executable by cortex_orchestrator only, errors '<field>: <what is wrong>'
-- (22023) that never quote a value, every read and change in the org's audit chain.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- ---- columns and tables -------------------------------------------------------------------------

alter table public.deployment_secrets
  -- null: the binding follows the secret's current version; set: pinned (a rolled-back deployment)
  add column version integer check (version >= 1);

alter table public.secrets
  -- rotation policy: a current version older than this is flagged (scheduler, API, CLI, metrics)
  add column max_age_seconds integer check (max_age_seconds between 3600 and 315360000);

-- A policy change is an audited change of its own. The new check only widens the old one, which
-- every existing row passes, so validating it cannot fail; NOT VALID + VALIDATE in a later file would
-- leave the audit log with no operation check at all in between.
alter table public.secret_access_log drop constraint secret_access_log_operation_check;
-- squawk-ignore constraint-missing-not-valid
alter table public.secret_access_log add constraint secret_access_log_operation_check check (operation in
  ('create', 'read', 'rotate', 'revoke', 'delete', 'bind', 'unbind', 'retention', 'policy'));

create table public.secret_rotations (
  id uuid primary key,
  org_id uuid not null references public.organizations (id),
  secret_id uuid not null references public.secrets (id),
  from_version integer not null check (from_version >= 1),
  to_version integer not null check (to_version >= 1),
  state text not null default 'running' check (state in ('running', 'completed')),
  -- leak response: the old version is retired as soon as the rotation completes
  leaked boolean not null default false,
  grace_seconds integer not null check (grace_seconds between 0 and 2592000),
  actor text check (pg_catalog.char_length(actor) <= 200),
  job_id text check (pg_catalog.char_length(job_id) <= 200),
  created_at timestamptz not null default pg_catalog.now(),
  updated_at timestamptz not null default pg_catalog.now(),
  finished_at timestamptz,
  retire_after timestamptz,
  old_retired_at timestamptz
);
-- one rotation of a secret at a time: a second would move `current_version` under the first
create unique index secret_rotations_one_running on public.secret_rotations (secret_id) where state = 'running';
create index secret_rotations_org_idx on public.secret_rotations (org_id);
create index secret_rotations_due_idx on public.secret_rotations (retire_after)
  where state = 'completed' and old_retired_at is null;

create table public.secret_rotation_deployments (
  rotation_id uuid not null references public.secret_rotations (id),
  deployment_id uuid not null references public.deployments (id) on delete cascade,
  from_version integer not null check (from_version >= 1),
  state text not null default 'pending'
    check (state in ('pending', 'switching', 'switched', 'rolled_back', 'failed', 'skipped')),
  reason text check (pg_catalog.char_length(reason) <= 300),
  swap_mode text check (swap_mode in ('blue-green', 'held-restart')),
  updated_at timestamptz not null default pg_catalog.now(),
  primary key (rotation_id, deployment_id)
);
create index secret_rotation_deployments_deployment_idx on public.secret_rotation_deployments (deployment_id);

alter table public.secret_rotations enable row level security;
alter table public.secret_rotation_deployments enable row level security;
create policy secret_rotations_select_member on public.secret_rotations
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));
create policy secret_rotation_deployments_select_member on public.secret_rotation_deployments
  for select to authenticated
  using (rotation_id in (
    select r.id from public.secret_rotations r
    join public.organization_members m on m.org_id = r.org_id
    where m.user_id = (select auth.uid())));
revoke all on table public.secret_rotations, public.secret_rotation_deployments
  from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.secret_rotations, public.secret_rotation_deployments to authenticated, service_role;

-- ---- helpers (internal) -------------------------------------------------------------------------

-- How many deployments still use a version: bindings whose effective version it is, and hosts of
-- a running rotation that have not moved off it yet.
create function public.secret_versions__users(p_secret_id uuid, p_version integer)
returns integer
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.count(distinct x.deployment_id)::integer from (
    select b.deployment_id from public.deployment_secrets b
    join public.secrets s on s.id = b.secret_id
    where b.secret_id = p_secret_id and coalesce(b.version, s.current_version) = p_version
    union all
    select rd.deployment_id from public.secret_rotation_deployments rd
    join public.secret_rotations r on r.id = rd.rotation_id
    where r.secret_id = p_secret_id and r.state = 'running' and rd.from_version = p_version
      and rd.state in ('pending', 'switching')
  ) x
$$;
revoke all on function public.secret_versions__users(uuid, integer) from public, anon, authenticated, service_role;

-- The versions of a secret a deployment may read or be pinned to: its binding's effective version,
-- and, while a rotation of the secret runs, that deployment's old version and the new one. Never
-- an older version nobody runs (an attacker holding the orchestrator's role could otherwise pin a
-- deployment to a long-replaced key and read it out).
create function public.secret_versions__allowed(p_deployment_id uuid, p_secret_id uuid, p_version integer)
returns boolean
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select exists (
    select 1 from public.deployment_secrets b join public.secrets s on s.id = b.secret_id
    where b.deployment_id = p_deployment_id and b.secret_id = p_secret_id
      and coalesce(b.version, s.current_version) = p_version
  ) or exists (
    select 1 from public.secret_rotation_deployments rd join public.secret_rotations r on r.id = rd.rotation_id
    where rd.deployment_id = p_deployment_id and r.secret_id = p_secret_id and r.state = 'running'
      and p_version in (rd.from_version, r.to_version)
  )
$$;
revoke all on function public.secret_versions__allowed(uuid, uuid, integer) from public, anon, authenticated, service_role;

create function public.secret_rotations__json(p_rotation_id uuid)
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.jsonb_build_object(
    'id', r.id, 'org_id', r.org_id, 'secret_id', r.secret_id, 'from_version', r.from_version,
    'to_version', r.to_version, 'state', r.state, 'leaked', r.leaked, 'grace_seconds', r.grace_seconds,
    'job_id', r.job_id, 'created_at', r.created_at, 'finished_at', r.finished_at,
    'retire_after', r.retire_after, 'old_retired_at', r.old_retired_at,
    'deployments', coalesce((
      select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'deployment_id', rd.deployment_id, 'from_version', rd.from_version, 'state', rd.state,
        'reason', rd.reason, 'swap_mode', rd.swap_mode, 'updated_at', rd.updated_at) order by rd.deployment_id)
      from public.secret_rotation_deployments rd where rd.rotation_id = r.id), '[]'::jsonb))
  from public.secret_rotations r where r.id = p_rotation_id
$$;
revoke all on function public.secret_rotations__json(uuid) from public, anon, authenticated, service_role;

-- Pin (or un-pin: null) every binding of a secret on a deployment; one audit row per binding moved.
create function public.deployment_secrets__move(
  p_deployment_id uuid, p_secret_id uuid, p_version integer, p_reason text,
  p_actor text, p_job_id text, p_request_ip inet, p_user_agent text)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_binding record;
  v_n integer := 0;
begin
  for v_binding in
    update public.deployment_secrets b set version = p_version, updated_at = pg_catalog.now()
    from public.secrets s
    where b.deployment_id = p_deployment_id and b.secret_id = p_secret_id and s.id = b.secret_id
    returning b.env_var, s.org_id, coalesce(p_version, s.current_version) as effective
  loop
    v_n := v_n + 1;
    perform public.secret_access_log__append('bind', 'success', v_binding.org_id, p_deployment_id, p_secret_id,
      v_binding.effective, pg_catalog.format('env_var %s now on version %s%s; %s', v_binding.env_var,
        v_binding.effective, case when p_version is null then ' (follows the current version)' else '' end, p_reason),
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return v_n;
end
$$;
revoke all on function public.deployment_secrets__move(uuid, uuid, integer, text, text, text, inet, text)
  from public, anon, authenticated, service_role;

-- ---- the rotation record ------------------------------------------------------------------------

-- Start a rotation: the new value becomes the current version (audited `rotate`), and every
-- deployment bound to the secret (not being removed) gets a row naming the version it runs now.
-- Idempotent on p_rotation_id (the caller derives it from an Idempotency-Key): the same id for
-- the same secret returns that rotation and adds nothing.
create function public.secret_rotations__start(
  p_rotation_id uuid, p_secret_id uuid, p_value text, p_fingerprint text, p_grace_seconds integer,
  p_leaked boolean default false,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null,
  p_org_id uuid default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
  v_existing public.secret_rotations%rowtype;
  v_running uuid;
  v_to integer;
  v_n integer;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('rotation_id', p_rotation_id);
  perform public.input__check_required('secret_id', p_secret_id);
  if p_grace_seconds is null or p_grace_seconds not between 0 and 2592000 then
    raise exception using errcode = '22023', message = 'grace_seconds: must be between 0 and 2592000';
  end if;
  select * into v_existing from public.secret_rotations r where r.id = p_rotation_id;
  if found then
    if v_existing.secret_id <> p_secret_id or v_existing.org_id <> coalesce(p_org_id, v_existing.org_id) then
      raise exception using errcode = '23505',
        message = 'rotation_id: already used for another secret (an Idempotency-Key reused for a different request)';
    end if;
    -- the same key with another value is another request (the fingerprint is the caller's keyed HMAC)
    if not exists (select 1 from public.secret_versions v where v.secret_id = p_secret_id
                   and v.version = v_existing.to_version and v.fingerprint = p_fingerprint) then
      raise exception using errcode = '23505',
        message = 'rotation_id: already used for another value (an Idempotency-Key reused for a different request)';
    end if;
    return public.secret_rotations__json(p_rotation_id) || pg_catalog.jsonb_build_object('existing', true);
  end if;
  perform public.secrets__check_value(p_value);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  -- an org-scoped caller (an API token) sees another org's secret as absent
  if not found or v_secret.org_id <> coalesce(p_org_id, v_secret.org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  if v_secret.status <> 'active' then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'secret_id: secret %s is %s; it cannot be rotated', p_secret_id, v_secret.status);
  end if;
  select r.id into v_running from public.secret_rotations r where r.secret_id = p_secret_id and r.state = 'running';
  if found then
    raise exception using errcode = '23505', message = pg_catalog.format(
      'secret_id: rotation %s of this secret is still running; wait for it to finish', v_running);
  end if;

  insert into public.secret_rotations
    (id, org_id, secret_id, from_version, to_version, leaked, grace_seconds, actor, job_id)
  values (p_rotation_id, v_secret.org_id, p_secret_id, v_secret.current_version, v_secret.current_version + 1,
    coalesce(p_leaked, false), case when coalesce(p_leaked, false) then 0 else p_grace_seconds end, p_actor, p_job_id);
  -- the version each host runs now: its pin, or the current version it follows
  insert into public.secret_rotation_deployments (rotation_id, deployment_id, from_version)
  select p_rotation_id, b.deployment_id, pg_catalog.min(coalesce(b.version, v_secret.current_version))
  from public.deployment_secrets b join public.deployments d on d.id = b.deployment_id
  where b.secret_id = p_secret_id and d.status not in ('deprovisioning', 'deleted')
  group by b.deployment_id;
  get diagnostics v_n = row_count;

  -- the new version (its own audited `rotate` row, with the vault write)
  v_to := (public.secrets__add_version(p_secret_id => p_secret_id, p_value => p_value, p_fingerprint => p_fingerprint,
    p_actor => p_actor, p_job_id => p_job_id, p_request_ip => p_request_ip, p_user_agent => p_user_agent) ->> 'version')::integer;
  update public.secret_rotations r set to_version = v_to where r.id = p_rotation_id;

  perform public.secret_access_log__append('rotate', 'success', v_secret.org_id, v_secret.deployment_id, p_secret_id,
    v_to, pg_catalog.format('rotation %s started: version %s to %s on %s deployment(s)%s', p_rotation_id,
      v_secret.current_version, v_to, v_n, case when coalesce(p_leaked, false) then '; leaked: no grace period' else '' end),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return public.secret_rotations__json(p_rotation_id) || pg_catalog.jsonb_build_object('existing', false);
end
$$;

-- A rotation as the API and the CLI show it; p_org_id (an org-scoped caller's) hides other orgs'.
create function public.secret_rotations__get(p_rotation_id uuid, p_org_id uuid default null)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v jsonb;
begin
  perform public.input__check_required('rotation_id', p_rotation_id);
  v := public.secret_rotations__json(p_rotation_id);
  if v is null or (p_org_id is not null and (v ->> 'org_id')::uuid <> p_org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('rotation %s not found', p_rotation_id);
  end if;
  return v;
end
$$;

-- One deployment's step in a rotation. `switching` marks the deployment `rotating`; every end
-- state restores `ready` and leaves the bindings where the host is: `switched` on the new version,
-- `rolled_back` / `failed` pinned to the old one, `skipped` (not running: its next provision
-- reads the current version) following the current one.
create function public.secret_rotation_deployments__set_state(
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
    end if;
  end if;

  update public.secret_rotation_deployments rd
  set state = p_state, reason = p_reason, swap_mode = coalesce(p_swap_mode, rd.swap_mode), updated_at = pg_catalog.now()
  where rd.rotation_id = p_rotation_id and rd.deployment_id = p_deployment_id;
  update public.secret_rotations r set updated_at = pg_catalog.now() where r.id = p_rotation_id;
  return public.secret_rotations__json(p_rotation_id);
end
$$;

-- Every deployment done: the rotation completes, and its old versions become due for retirement
-- after the grace period (at once for a leak).
create function public.secret_rotations__finish(
  p_rotation_id uuid, p_actor text default null, p_job_id text default null, p_request_ip inet default null,
  p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_rot public.secret_rotations%rowtype;
  v_open integer;
  v_summary text;
  v_secret_dep uuid;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('rotation_id', p_rotation_id);
  select * into v_rot from public.secret_rotations r where r.id = p_rotation_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('rotation %s not found', p_rotation_id);
  end if;
  if v_rot.state = 'completed' then
    return public.secret_rotations__json(p_rotation_id);
  end if;
  select pg_catalog.count(*) into v_open from public.secret_rotation_deployments rd
  where rd.rotation_id = p_rotation_id and rd.state in ('pending', 'switching');
  if v_open > 0 then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'rotation_id: %s deployment(s) of rotation %s are not done yet', v_open, p_rotation_id);
  end if;
  select pg_catalog.string_agg(pg_catalog.format('%s %s', x.n, x.state), ', ' order by x.state) into v_summary
  from (select rd.state, pg_catalog.count(*) as n from public.secret_rotation_deployments rd
        where rd.rotation_id = p_rotation_id group by rd.state) x;
  update public.secret_rotations r
  set state = 'completed', finished_at = pg_catalog.now(), updated_at = pg_catalog.now(),
      retire_after = pg_catalog.now() + pg_catalog.make_interval(secs => r.grace_seconds)
  where r.id = p_rotation_id;
  select s.deployment_id into v_secret_dep from public.secrets s where s.id = v_rot.secret_id;
  perform public.secret_access_log__append('rotate', 'success', v_rot.org_id, v_secret_dep, v_rot.secret_id,
    v_rot.to_version, pg_catalog.format('rotation %s completed: %s', p_rotation_id, coalesce(v_summary, 'no deployments')),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return public.secret_rotations__json(p_rotation_id);
end
$$;

-- Rotations to look after: running ones with no progress for p_idle_seconds (their job was lost:
-- resume), and completed ones whose old versions are due for retirement.
create function public.secret_rotations__list_attention(p_idle_seconds integer)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_idle_seconds is null or p_idle_seconds not between 0 and 2592000 then
    raise exception using errcode = '22023', message = 'idle_seconds: must be between 0 and 2592000';
  end if;
  return pg_catalog.jsonb_build_object(
    'stalled', coalesce((select pg_catalog.jsonb_agg(r.id order by r.updated_at) from public.secret_rotations r
      where r.state = 'running' and r.updated_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_idle_seconds)), '[]'::jsonb),
    'due', coalesce((select pg_catalog.jsonb_agg(r.id order by r.retire_after) from public.secret_rotations r
      where r.state = 'completed' and r.old_retired_at is null and r.retire_after <= pg_catalog.now()), '[]'::jsonb));
end
$$;

-- Retire a completed rotation's old versions once its grace period has ended: each vault secret
-- deleted (audited `delete`) unless a deployment still uses the version (a rolled-back one): that
-- version is kept and named. Nothing is deleted before retire_after.
create function public.secret_rotations__retire_old(
  p_rotation_id uuid, p_actor text default null, p_job_id text default null, p_request_ip inet default null,
  p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_rot public.secret_rotations%rowtype;
  v_secret public.secrets%rowtype;
  v_version integer;
  v_vault uuid;
  v_users integer;
  v_retired integer[] := array[]::integer[];
  v_kept jsonb := '[]'::jsonb;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('rotation_id', p_rotation_id);
  select * into v_rot from public.secret_rotations r where r.id = p_rotation_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('rotation %s not found', p_rotation_id);
  end if;
  if v_rot.state <> 'completed' or v_rot.retire_after > pg_catalog.now() then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'rotation_id: rotation %s is not due for retirement (%s, retire after %s)', p_rotation_id, v_rot.state,
      coalesce(v_rot.retire_after::text, 'its end'));
  end if;
  select * into v_secret from public.secrets s where s.id = v_rot.secret_id for update;
  for v_version in
    select distinct x.v from (
      select v_rot.from_version as v
      union select rd.from_version from public.secret_rotation_deployments rd where rd.rotation_id = p_rotation_id
    ) x where x.v <> v_secret.current_version order by x.v
  loop
    select v.vault_secret_id into v_vault from public.secret_versions v
    where v.secret_id = v_rot.secret_id and v.version = v_version and v.retired_at is null for update;
    continue when not found; -- already retired (or revoked): nothing left to delete
    v_users := public.secret_versions__users(v_rot.secret_id, v_version);
    if v_users > 0 then
      v_kept := v_kept || pg_catalog.jsonb_build_object('version', v_version, 'deployments', v_users);
      continue;
    end if;
    delete from vault.secrets vs where vs.id = v_vault;
    update public.secret_versions v set retired_at = pg_catalog.now()
    where v.secret_id = v_rot.secret_id and v.version = v_version;
    v_retired := v_retired || v_version;
    perform public.secret_access_log__append('delete', 'success', v_rot.org_id, v_secret.deployment_id, v_rot.secret_id,
      v_version, pg_catalog.format('version retired after rotation %s%s', p_rotation_id,
        case when v_rot.leaked then ' (leaked: no grace period)' else '' end),
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  if pg_catalog.jsonb_array_length(v_kept) = 0 then
    update public.secret_rotations r set old_retired_at = pg_catalog.now(), updated_at = pg_catalog.now()
    where r.id = p_rotation_id;
  end if;
  return pg_catalog.jsonb_build_object('rotation_id', p_rotation_id, 'retired', pg_catalog.to_jsonb(v_retired),
    'kept', v_kept);
end
$$;

-- ---- bindings by version ------------------------------------------------------------------------

-- A deployment's bindings with the version each one is on (no values): what its full environment is.
create function public.deployment_secrets__list(p_deployment_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'env_var', b.env_var, 'secret_id', b.secret_id, 'version', coalesce(b.version, s.current_version),
      'pinned', b.version is not null, 'status', s.status) order by b.env_var)
    from public.deployment_secrets b join public.secrets s on s.id = b.secret_id
    where b.deployment_id = p_deployment_id), '[]'::jsonb);
end
$$;

-- A secret's metadata (no value) and every deployment it is bound to (optionally one), with its
-- env vars: what a rotation's key check and a revoke's fan-out need.
create function public.deployment_secrets__list_for_secret(
  p_secret_id uuid, p_deployment_id uuid default null, p_org_id uuid default null)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
begin
  perform public.input__check_required('secret_id', p_secret_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id;
  -- an org-scoped caller (an API token) sees another org's secret as absent
  if not found or v_secret.org_id <> coalesce(p_org_id, v_secret.org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  return pg_catalog.jsonb_build_object(
    'secret_id', v_secret.id, 'org_id', v_secret.org_id, 'provider', v_secret.provider, 'status', v_secret.status,
    'current_version', v_secret.current_version, 'max_age_seconds', v_secret.max_age_seconds,
    'deployments', coalesce((
      select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'deployment_id', x.deployment_id, 'status', x.status, 'env_vars', x.env_vars) order by x.deployment_id)
      from (
        select b.deployment_id, d.status, pg_catalog.array_agg(b.env_var order by b.env_var) as env_vars
        from public.deployment_secrets b join public.deployments d on d.id = b.deployment_id
        where b.secret_id = p_secret_id and (p_deployment_id is null or b.deployment_id = p_deployment_id)
        group by b.deployment_id, d.status
      ) x), '[]'::jsonb));
end
$$;

-- Move a deployment's bindings of a secret to a version (rollback by hand, or back to following
-- the current version with p_version null). Only to a version the deployment may run (see
-- secret_versions__allowed, or the current one); anything else is a denial, audited.
create function public.deployment_secrets__set_version(
  p_deployment_id uuid, p_secret_id uuid, p_version integer default null,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_dep public.deployments%rowtype;
  v_secret public.secrets%rowtype;
  v_reason text;
  v_n integer;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  perform public.input__check_required('secret_id', p_secret_id);
  if p_version is not null and p_version < 1 then
    raise exception using errcode = '22023', message = 'version: must be a positive integer (or null: follow the current version)';
  end if;
  select * into v_dep from public.deployments d where d.id = p_deployment_id for share;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  v_reason := case
    when not found then 'secret not found'
    when v_secret.org_id <> v_dep.org_id then 'secret belongs to another organization'
    when v_secret.status <> 'active' then 'secret is ' || v_secret.status
    when not exists (select 1 from public.deployment_secrets b where b.deployment_id = p_deployment_id and b.secret_id = p_secret_id)
      then 'secret is not bound to this deployment'
    when p_version is not null and p_version <> v_secret.current_version
      and not public.secret_versions__allowed(p_deployment_id, p_secret_id, p_version)
      then pg_catalog.format('version %s is neither the current one nor one this deployment runs', p_version)
    when p_version is not null and not exists (select 1 from public.secret_versions v
      where v.secret_id = p_secret_id and v.version = p_version and v.retired_at is null)
      then pg_catalog.format('version %s is retired', p_version)
  end;
  if v_reason is not null then
    -- the requester's chain never names another org's secret
    perform public.secret_access_log__append('bind', 'denied', v_dep.org_id, p_deployment_id,
      case when v_secret.org_id = v_dep.org_id then p_secret_id end, null,
      'move binding refused: ' || v_reason, p_actor, p_job_id, p_request_ip, p_user_agent);
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason', v_reason);
  end if;
  v_n := public.deployment_secrets__move(p_deployment_id, p_secret_id,
    case when p_version = v_secret.current_version then null else p_version end,
    'moved by hand', p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object('status', 'ok', 'bindings_moved', v_n,
    'version', coalesce(p_version, v_secret.current_version));
end
$$;

-- Read given versions of secrets bound to a deployment (a rotation's new value, a rollback's old
-- one, the rest of its environment at the versions it runs). The same entitlement rules as
-- deployment_secrets__read, plus the version rule of secret_versions__allowed; values only against
-- a committed intent (deployment_secrets__intend_read naming these secrets); one audit row per
-- value (naming its version), every denial audited, another org's secret refused in both chains.
create function public.deployment_secrets__read_versions(
  p_deployment_id uuid, p_secret_ids uuid[], p_versions integer[],
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null,
  p_intent_id uuid default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_org_id uuid;
  v_status text;
  v_secret record;
  v_reason text;
  v_denied uuid[] := array[]::uuid[];
  v_reasons text[] := array[]::text[];
  v_owners uuid[] := array[]::uuid[];
  v_versions integer[] := array[]::integer[];
  v_denial record;
  v_values jsonb := '[]'::jsonb;
  v_row record;
  v_value text;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  perform public.input__check_required('secret_ids', p_secret_ids);
  perform public.input__check_required('versions', p_versions);
  if pg_catalog.cardinality(p_secret_ids) not between 1 and 100 then
    raise exception using errcode = '22023', message = 'secret_ids: must hold 1 to 100 ids';
  end if;
  if pg_catalog.cardinality(p_versions) <> pg_catalog.cardinality(p_secret_ids) then
    raise exception using errcode = '22023', message = 'versions: must hold one version per secret id';
  end if;
  if pg_catalog.array_position(p_secret_ids, null) is not null then
    raise exception using errcode = '22023', message = 'secret_ids: must not contain null';
  end if;
  if exists (select 1 from pg_catalog.unnest(p_versions) x(v) where x.v is null or x.v < 1) then
    raise exception using errcode = '22023', message = 'versions: must be positive integers';
  end if;
  if (select pg_catalog.count(distinct x.id) from pg_catalog.unnest(p_secret_ids) x(id)) <> pg_catalog.cardinality(p_secret_ids) then
    raise exception using errcode = '22023', message = 'secret_ids: must not repeat an id';
  end if;

  select d.org_id, d.status into v_org_id, v_status from public.deployments d where d.id = p_deployment_id for share;
  if not found or v_status in ('deprovisioning', 'deleted') then
    v_reason := case when v_status is null then 'not found' else 'is ' || v_status end;
    for i in 1 .. pg_catalog.cardinality(p_secret_ids) loop
      perform public.secret_access_log__append('read', 'denied', v_org_id, p_deployment_id,
        case when v_org_id is not null then p_secret_ids[i] end, null, 'deployment ' || v_reason,
        p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object('status', 'denied',
      'reason', pg_catalog.format('deployment %s %s', p_deployment_id, v_reason));
  end if;

  -- entitlement of each (secret, version), locked in id order like deployment_secrets__read
  for v_secret in
    select x.id, x.v, s.org_id, s.status, s.deployment_id as scope, s.current_version, s.id is not null as present
    from rows from (pg_catalog.unnest(p_secret_ids), pg_catalog.unnest(p_versions)) as x(id, v)
    left join public.secrets s on s.id = x.id
    order by x.id
  loop
    perform 1 from public.secrets s where s.id = v_secret.id for share;
    v_reason := case
      when not v_secret.present then 'not found'
      when v_secret.org_id <> v_org_id then 'belongs to another organization'
      when v_secret.status <> 'active' then 'is ' || v_secret.status
      when v_secret.scope is not null and v_secret.scope <> p_deployment_id then 'is scoped to another deployment'
      when not exists (select 1 from public.deployment_secrets b
        where b.deployment_id = p_deployment_id and b.secret_id = v_secret.id) then 'is not bound to this deployment'
      when not public.secret_versions__allowed(p_deployment_id, v_secret.id, v_secret.v)
        then pg_catalog.format('version %s is not one this deployment runs or is rotating to', v_secret.v)
    end;
    if v_reason is not null then
      v_denied := v_denied || v_secret.id;
      v_reasons := v_reasons || v_reason;
      v_versions := v_versions || v_secret.v;
      v_owners := v_owners || case when v_reason = 'belongs to another organization' then v_secret.org_id end;
    end if;
  end loop;
  if pg_catalog.cardinality(v_denied) > 0 then
    -- two chains are locked in chain id order (see deployment_secrets__read)
    for v_denial in
      select x.org, x.dep, x.sid, x.ver, x.reason from (
        select v_org_id as org, p_deployment_id as dep, case when d.owner is null then d.id end as sid,
               case when d.owner is null then d.ver end as ver, 'secret ' || d.reason as reason, d.ord, 0 as k
        from rows from (pg_catalog.unnest(v_denied), pg_catalog.unnest(v_reasons), pg_catalog.unnest(v_owners),
          pg_catalog.unnest(v_versions)) with ordinality as d(id, reason, owner, ver, ord)
        union all
        select d.owner, null::uuid, d.id, d.ver,
               'version read refused: asked for by a deployment of another organization', d.ord, 1
        from rows from (pg_catalog.unnest(v_denied), pg_catalog.unnest(v_reasons), pg_catalog.unnest(v_owners),
          pg_catalog.unnest(v_versions)) with ordinality as d(id, reason, owner, ver, ord)
        where d.owner is not null
      ) x order by x.org, x.ord, x.k
    loop
      perform public.secret_access_log__append('read', 'denied', v_denial.org, v_denial.dep, v_denial.sid,
        v_denial.ver, v_denial.reason, p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object('status', 'denied',
      'reason', pg_catalog.format('secret %s %s', v_denied[1], v_reasons[1]));
  end if;

  if not public.secret_read_intents__valid(p_intent_id, p_deployment_id, p_secret_ids, null) then
    for i in 1 .. pg_catalog.cardinality(p_secret_ids) loop
      perform public.secret_access_log__append('read', 'denied', v_org_id, p_deployment_id, p_secret_ids[i],
        p_versions[i], 'no committed read intent', p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason',
      'read intent missing, expired, for another read, or not committed: call deployment_secrets__intend_read in a transaction of its own first');
  end if;

  for v_row in
    select b.env_var, x.id as secret_id, x.v as version, sv.vault_secret_id, sv.retired_at,
           public.secrets__vault_name(s.org_id, s.deployment_id, s.id, x.v) as vault_name
    from rows from (pg_catalog.unnest(p_secret_ids), pg_catalog.unnest(p_versions)) as x(id, v)
    join public.secrets s on s.id = x.id
    join public.deployment_secrets b on b.deployment_id = p_deployment_id and b.secret_id = x.id
    left join public.secret_versions sv on sv.secret_id = x.id and sv.version = x.v
    order by b.env_var
  loop
    v_value := null;
    if v_row.vault_secret_id is not null and v_row.retired_at is null then
      begin
        -- the vault row must carry the name the scheme gives this version (see deployment_secrets__read)
        select ds.decrypted_secret into v_value from vault.decrypted_secrets ds
        where ds.id = v_row.vault_secret_id and ds.name = v_row.vault_name;
      exception when others then
        v_value := null;
      end;
    end if;
    if v_value is null then
      perform public.secret_access_log__append('read', 'error', v_org_id, p_deployment_id, v_row.secret_id,
        v_row.version, 'vault secret missing, retired or unreadable', p_actor, p_job_id, p_request_ip, p_user_agent);
      return pg_catalog.jsonb_build_object('status', 'error', 'reason', pg_catalog.format(
        'secret %s version %s: vault secret missing, retired or unreadable', v_row.secret_id, v_row.version));
    end if;
    v_values := v_values || pg_catalog.jsonb_build_object(
      'env_var', v_row.env_var, 'secret_id', v_row.secret_id, 'version', v_row.version, 'value', v_value);
  end loop;

  -- audit rows last, one per value returned
  for i in 0 .. pg_catalog.jsonb_array_length(v_values) - 1 loop
    perform public.secret_access_log__append('read', 'success', v_org_id, p_deployment_id,
      (v_values -> i ->> 'secret_id')::uuid, (v_values -> i ->> 'version')::integer,
      'env_var ' || (v_values -> i ->> 'env_var') || '; version ' || (v_values -> i ->> 'version')
        || '; intent ' || p_intent_id::text,
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('status', 'ok', 'secrets', v_values);
end
$$;

-- Revoke a secret from one deployment (or every one): its bindings removed, one audited `revoke`
-- row per binding. The caller rewrites the hosts' environments first (the job does).
create function public.deployment_secrets__revoke(
  p_secret_id uuid, p_deployment_id uuid default null,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
  v_binding record;
  v_n integer := 0;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('secret_id', p_secret_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  for v_binding in
    delete from public.deployment_secrets b
    where b.secret_id = p_secret_id and (p_deployment_id is null or b.deployment_id = p_deployment_id)
    returning b.deployment_id, b.env_var
  loop
    v_n := v_n + 1;
    perform public.secret_access_log__append('revoke', 'success', v_secret.org_id, v_binding.deployment_id,
      p_secret_id, null, 'env_var ' || v_binding.env_var || ' unbound', p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('secret_id', p_secret_id, 'bindings_removed', v_n);
end
$$;

-- ---- policy ------------------------------------------------------------------------------------

create function public.secrets__set_max_age(
  p_secret_id uuid, p_max_age_seconds integer default null,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('secret_id', p_secret_id);
  if p_max_age_seconds is not null and p_max_age_seconds not between 3600 and 315360000 then
    raise exception using errcode = '22023', message = 'max_age_seconds: must be between 3600 (an hour) and 315360000 (ten years), or null';
  end if;
  update public.secrets s set max_age_seconds = p_max_age_seconds, updated_at = pg_catalog.now()
  where s.id = p_secret_id returning * into v_secret;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  perform public.secret_access_log__append('policy', 'success', v_secret.org_id, v_secret.deployment_id, p_secret_id,
    null, coalesce(pg_catalog.format('max age %s s', p_max_age_seconds), 'max age removed'),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object('secret_id', p_secret_id, 'max_age_seconds', p_max_age_seconds);
end
$$;

-- Active secrets whose current version is older than their max age (one org's, or all).
create function public.secrets__list_overdue(p_org_id uuid default null)
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
    'secret_id', s.id, 'org_id', s.org_id, 'name', s.name, 'provider', s.provider,
    'current_version', s.current_version, 'version_created_at', v.created_at,
    'age_seconds', pg_catalog.floor(extract(epoch from pg_catalog.now() - v.created_at))::bigint,
    'max_age_seconds', s.max_age_seconds) order by v.created_at), '[]'::jsonb)
  from public.secrets s
  join public.secret_versions v on v.secret_id = s.id and v.version = s.current_version
  where s.status = 'active' and s.max_age_seconds is not null
    and (p_org_id is null or s.org_id = p_org_id)
    and v.created_at < pg_catalog.now() - pg_catalog.make_interval(secs => s.max_age_seconds)
$$;

-- Leak response: every audited read of one version of a secret (which deployments, when, by which
-- job), from the audit log, which the orchestrator's role cannot select directly.
create function public.secret_access_log__reads_of_version(p_secret_id uuid, p_version integer, p_org_id uuid default null)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('secret_id', p_secret_id);
  if p_version is null or p_version < 1 then
    raise exception using errcode = '22023', message = 'version: must be a positive integer';
  end if;
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'id', l.id, 'at', l.at, 'deployment_id', l.deployment_id, 'outcome', l.outcome, 'actor', l.actor,
      'job_id', l.job_id, 'reason', l.reason) order by l.id)
    from (select * from public.secret_access_log a
          where a.secret_id = p_secret_id and a.version = p_version and a.operation = 'read'
            and (p_org_id is null or a.org_id = p_org_id)
          order by a.id limit 1000) l), '[]'::jsonb);
end
$$;

-- ---- retirement honours pinned bindings -----------------------------------------------------------

-- secret_versions__retire (20261125211700_secrets.sql) refused only the current version; a
-- binding may now be pinned to an older one (a rolled-back deployment), and a running rotation's
-- hosts may still run it. Same signature and body, one check more.
create or replace function public.secret_versions__retire(
  p_secret_id uuid, p_version integer, p_actor text default null, p_job_id text default null,
  p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
  v_row public.secret_versions%rowtype;
  v_users integer;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('secret_id', p_secret_id);
  if p_version is null or p_version < 1 then
    raise exception using errcode = '22023', message = 'version: must be a positive integer';
  end if;
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  select * into v_row from public.secret_versions v
  where v.secret_id = p_secret_id and v.version = p_version for update;
  if not found then
    raise exception using errcode = 'P0002',
      message = pg_catalog.format('secret %s version %s not found', p_secret_id, p_version);
  end if;
  if v_secret.status = 'active' and p_version = v_secret.current_version then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'version: %s is the current version of secret %s; add a new version before retiring this one',
      p_version, p_secret_id);
  end if;
  v_users := public.secret_versions__users(p_secret_id, p_version);
  if v_row.retired_at is null and v_users > 0 then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'version: %s of secret %s is still used by %s deployment(s); move or rotate them first',
      p_version, p_secret_id, v_users);
  end if;
  -- already retired: nothing left to delete, nothing to audit
  if v_row.retired_at is null then
    delete from vault.secrets vs where vs.id = v_row.vault_secret_id;
    update public.secret_versions v set retired_at = now()
    where v.secret_id = p_secret_id and v.version = p_version
    returning * into v_row;
    perform public.secret_access_log__append('delete', 'success', v_secret.org_id, v_secret.deployment_id,
      p_secret_id, p_version, 'version retired', p_actor, p_job_id, p_request_ip, p_user_agent);
  end if;
  return pg_catalog.jsonb_build_object(
    'secret_id', p_secret_id, 'version', p_version, 'retired_at', v_row.retired_at);
end
$$;

-- ---- grants -------------------------------------------------------------------------------------

do $$
declare
  f text;
begin
  foreach f in array array[
    'public.secret_rotations__start(uuid, uuid, text, text, integer, boolean, text, text, inet, text, uuid)',
    'public.secret_rotations__get(uuid, uuid)',
    'public.secret_rotation_deployments__set_state(uuid, uuid, text, text, text, text, text, inet, text)',
    'public.secret_rotations__finish(uuid, text, text, inet, text)',
    'public.secret_rotations__list_attention(integer)',
    'public.secret_rotations__retire_old(uuid, text, text, inet, text)',
    'public.deployment_secrets__list(uuid)',
    'public.deployment_secrets__list_for_secret(uuid, uuid, uuid)',
    'public.deployment_secrets__set_version(uuid, uuid, integer, text, text, inet, text)',
    'public.deployment_secrets__read_versions(uuid, uuid[], integer[], text, text, inet, text, uuid)',
    'public.deployment_secrets__revoke(uuid, uuid, text, text, inet, text)',
    'public.secrets__set_max_age(uuid, integer, text, text, inet, text)',
    'public.secrets__list_overdue(uuid)',
    'public.secret_access_log__reads_of_version(uuid, integer, uuid)'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute pg_catalog.format('grant execute on function %s to cortex_orchestrator', f);
  end loop;
end
$$;
