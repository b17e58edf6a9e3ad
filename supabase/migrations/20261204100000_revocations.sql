-- Review R7 (issue 11), findings 1, 3, 4 and 5: a revoke is a record, not only an audit row.
-- * (3) secrets__request_revoke opens a revocation (public.secret_revocations) and returns its id;
--   the `revoke` job carries that id alone, and secrets__revoke / deployment_secrets__revoke
--   refuse unless they name an OPEN revocation of that secret (and, for one deployment, of the
--   whole secret or that deployment). A job forged in Redis with ids only revokes nothing: the
--   signatures without a revocation are dropped.
-- * (5) a revocation the job could not finish (a provision past its `secrets` step holds the
--   secret) stays open with its result noted; the rotation sweep lists open revocations left idle
--   (secret_revocations__list_open) and queues their job again until it is done.
-- * (4) while a whole-secret revocation is open, the secret takes no new binding
--   (deployment_secrets__bind) and no rotation (secret_rotations__start): a deployment cannot be
--   bound to the key after the job has listed the bound deployments.
-- * (1) deployment_secrets__bind re-pointing an env var to ANOTHER secret drops the old binding's
--   version pin (it named the other secret's version), and its audit row names the version the
--   binding now reads.
-- Same rules as the rest of the contract: security definer, `search_path = pg_catalog, pg_temp`,
-- executable by cortex_orchestrator only, errors '<field>: <what is wrong>' (22023) that never
-- quote a value; a missing row is P0002.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create table public.secret_revocations (
  id uuid primary key,
  org_id uuid not null references public.organizations (id),
  secret_id uuid not null references public.secrets (id),
  -- null: the whole secret (every deployment, then the vault); set: that deployment only
  deployment_id uuid references public.deployments (id) on delete cascade,
  state text not null default 'open' check (state in ('open', 'done')),
  job_id text not null check (pg_catalog.char_length(job_id) <= 200),
  -- job runs that reached their end (done, or left open: a provision still held the secret)
  attempts integer not null default 0 check (attempts >= 0),
  -- the last run's outcome: deployment ids and value-free reasons only
  result jsonb check (result is null or (pg_catalog.jsonb_typeof(result) = 'object'
    and pg_catalog.octet_length(result::text) <= 16384)),
  created_at timestamptz not null default pg_catalog.now(),
  updated_at timestamptz not null default pg_catalog.now(),
  finished_at timestamptz
);
-- one open revocation per secret (whole) and per (secret, deployment): a repeated request is the same one
create unique index secret_revocations_one_open_whole on public.secret_revocations (secret_id)
  where state = 'open' and deployment_id is null;
create unique index secret_revocations_one_open_deployment on public.secret_revocations (secret_id, deployment_id)
  where state = 'open' and deployment_id is not null;
create index secret_revocations_open_idx on public.secret_revocations (updated_at) where state = 'open';
create index secret_revocations_org_idx on public.secret_revocations (org_id);
create index secret_revocations_deployment_idx on public.secret_revocations (deployment_id);

alter table public.secret_revocations enable row level security;
create policy secret_revocations_select_member on public.secret_revocations
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));
revoke all on table public.secret_revocations from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.secret_revocations to authenticated, service_role;

-- ---- helpers (internal) -------------------------------------------------------------------------

create function public.secret_revocations__json(p_revocation_id uuid)
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.jsonb_build_object(
    'id', r.id, 'org_id', r.org_id, 'secret_id', r.secret_id, 'deployment_id', r.deployment_id, 'state', r.state,
    'job_id', r.job_id, 'attempts', r.attempts, 'result', r.result, 'created_at', r.created_at,
    'updated_at', r.updated_at, 'finished_at', r.finished_at)
  from public.secret_revocations r where r.id = p_revocation_id
$$;
revoke all on function public.secret_revocations__json(uuid) from public, anon, authenticated, service_role;

-- The refusal of a revoke that names no open revocation of this secret (and, with p_deployment_id,
-- of the whole secret or that deployment; without it, of the whole secret). Locks the revocation
-- (after the secret, which the callers lock first).
create function public.secret_revocations__check_open(
  p_revocation_id uuid, p_secret_id uuid, p_deployment_id uuid)
returns void
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.secret_revocations%rowtype;
begin
  perform public.input__check_required('revocation_id', p_revocation_id);
  select * into v from public.secret_revocations r where r.id = p_revocation_id for update;
  if not found or v.state <> 'open' or v.secret_id <> p_secret_id
     or (v.deployment_id is not null and v.deployment_id is distinct from p_deployment_id) then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'revocation_id: %s is not an open revocation of secret %s%s; a revoke must be requested first (secrets__request_revoke)',
      p_revocation_id, p_secret_id,
      case when p_deployment_id is null then '' else pg_catalog.format(' for deployment %s', p_deployment_id) end);
  end if;
end
$$;
revoke all on function public.secret_revocations__check_open(uuid, uuid, uuid)
  from public, anon, authenticated, service_role;

-- ---- the request ----------------------------------------------------------------------------------

-- A revoke accepted: the secret must exist (and be p_org_id's, for an org-scoped caller), and, for
-- one deployment, be bound to it. Opens a revocation (or returns the open one for the same secret
-- and deployment-or-whole: a repeated request is the same revocation and the same job) and writes
-- the audited `request` row naming it and its job (`revoke-<revocation id>`; p_job_id is not
-- used: the job is the revocation's). The secret is locked first, so a bind of it waiting on that
-- lock sees the revocation once this commits.
create or replace function public.secrets__request_revoke(
  p_secret_id uuid, p_deployment_id uuid default null, p_org_id uuid default null,
  p_actor text default null, p_job_id text default null, p_request_ip inet default null, p_user_agent text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
  v_rev public.secret_revocations%rowtype;
  v_existing boolean := true;
  v_id bigint;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('actor', p_actor);
  perform public.input__check_required('secret_id', p_secret_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found or v_secret.org_id <> coalesce(p_org_id, v_secret.org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  if p_deployment_id is not null and not exists (
    select 1 from public.deployment_secrets b where b.secret_id = p_secret_id and b.deployment_id = p_deployment_id
  ) then
    raise exception using errcode = 'P0002',
      message = pg_catalog.format('secret %s is not bound to deployment %s', p_secret_id, p_deployment_id);
  end if;
  select * into v_rev from public.secret_revocations r
  where r.secret_id = p_secret_id and r.state = 'open' and r.deployment_id is not distinct from p_deployment_id
  for update;
  if not found then
    v_existing := false;
    v_rev.id := pg_catalog.gen_random_uuid();
    insert into public.secret_revocations (id, org_id, secret_id, deployment_id, job_id)
    values (v_rev.id, v_secret.org_id, p_secret_id, p_deployment_id, 'revoke-' || v_rev.id::text)
    returning * into v_rev;
  end if;
  v_id := public.secret_access_log__append('request', 'success', v_secret.org_id,
    coalesce(p_deployment_id, v_secret.deployment_id), p_secret_id, null,
    case when p_deployment_id is null then 'revoke requested: every deployment and the vault'
         else 'revoke requested: one deployment' end
      || case when v_existing then ' (already open)' else '' end,
    p_actor, v_rev.job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object('audit_id', v_id, 'org_id', v_secret.org_id, 'revocation_id', v_rev.id,
    'job_id', v_rev.job_id, 'existing', v_existing);
end
$$;

-- A revocation as the job reads it (ids, state, the last result; never a value).
create function public.secret_revocations__get(p_revocation_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v jsonb;
begin
  perform public.input__check_required('revocation_id', p_revocation_id);
  v := public.secret_revocations__json(p_revocation_id);
  if v is null then
    raise exception using errcode = 'P0002', message = pg_catalog.format('revocation %s not found', p_revocation_id);
  end if;
  return v;
end
$$;

-- The end of one job run: `done`, or still open (a provision past its `secrets` step held the
-- secret) with the result and the run counted; updated_at restarts the sweep's idle clock. A done
-- revocation stays done (a late run changes nothing).
create function public.secret_revocations__finish(p_revocation_id uuid, p_done boolean, p_result jsonb default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.secret_revocations%rowtype;
begin
  perform public.input__check_required('revocation_id', p_revocation_id);
  perform public.input__check_required('done', p_done);
  if p_result is not null and (pg_catalog.jsonb_typeof(p_result) <> 'object'
                               or pg_catalog.octet_length(p_result::text) > 16384) then
    raise exception using errcode = '22023', message = 'result: must be a JSON object of at most 16384 bytes';
  end if;
  select * into v from public.secret_revocations r where r.id = p_revocation_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('revocation %s not found', p_revocation_id);
  end if;
  if v.state = 'open' then
    update public.secret_revocations r set
      state = case when p_done then 'done' else 'open' end,
      attempts = r.attempts + 1,
      result = coalesce(p_result, r.result),
      updated_at = pg_catalog.now(),
      finished_at = case when p_done then pg_catalog.now() end
    where r.id = p_revocation_id;
  end if;
  return public.secret_revocations__json(p_revocation_id);
end
$$;

-- Open revocations idle for p_idle_seconds (no run ended, or none started, since): the rotation
-- sweep queues their job again (ids only; a job still queued or running under that id is kept).
create function public.secret_revocations__list_open(p_idle_seconds integer)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_idle_seconds is null or p_idle_seconds not between 0 and 2592000 then
    raise exception using errcode = '22023', message = 'idle_seconds: must be between 0 and 2592000';
  end if;
  return coalesce((select pg_catalog.jsonb_agg(r.id order by r.updated_at) from public.secret_revocations r
    where r.state = 'open' and r.updated_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_idle_seconds)),
    '[]'::jsonb);
end
$$;

-- ---- the revokes: only under an open revocation -----------------------------------------------------

drop function public.secrets__revoke(uuid, text, text, inet, text);
drop function public.deployment_secrets__revoke(uuid, uuid, text, text, inet, text);

-- As before (20261125211700_secrets.sql), under a whole-secret revocation p_revocation_id (its
-- audit row as before; the job id, `revoke-<revocation id>`, names the revocation).
create function public.secrets__revoke(
  p_secret_id uuid,
  p_revocation_id uuid,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
  v_vault_deleted bigint;
  v_unbound bigint;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('secret_id', p_secret_id);
  perform public.input__check_required('revocation_id', p_revocation_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  perform public.secret_revocations__check_open(p_revocation_id, p_secret_id, null);
  if v_secret.status <> 'active' then
    return pg_catalog.jsonb_build_object(
      'secret_id', p_secret_id, 'status', v_secret.status, 'vault_secrets_deleted', 0, 'bindings_removed', 0);
  end if;

  -- its bindings, in key order (as secrets__delete_for_deployment locks them), before any is deleted
  perform 1 from public.deployment_secrets b where b.secret_id = p_secret_id
  order by b.deployment_id, b.env_var
  for update;
  delete from vault.secrets vs
  where vs.id in (select v.vault_secret_id from public.secret_versions v where v.secret_id = p_secret_id);
  get diagnostics v_vault_deleted = row_count;
  update public.secret_versions v set retired_at = now() where v.secret_id = p_secret_id and v.retired_at is null;
  delete from public.deployment_secrets b where b.secret_id = p_secret_id;
  get diagnostics v_unbound = row_count;
  update public.secrets s set status = 'revoked', revoked_at = now(), updated_at = now() where s.id = p_secret_id;

  -- audit row last: the chain head is the last lock taken
  perform public.secret_access_log__append('revoke', 'success', v_secret.org_id, v_secret.deployment_id, p_secret_id,
    v_secret.current_version,
    pg_catalog.format('%s vault secrets deleted, %s bindings removed', v_vault_deleted, v_unbound),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object(
    'secret_id', p_secret_id, 'status', 'revoked', 'vault_secrets_deleted', v_vault_deleted,
    'bindings_removed', v_unbound);
end
$$;

-- As before (20261201120000_rotation.sql), under revocation p_revocation_id: one deployment's
-- bindings (its own revocation's, or a whole-secret one's), or every binding (a whole-secret one).
create function public.deployment_secrets__revoke(
  p_secret_id uuid, p_revocation_id uuid, p_deployment_id uuid default null,
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
  perform public.input__check_required('revocation_id', p_revocation_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  perform public.secret_revocations__check_open(p_revocation_id, p_secret_id, p_deployment_id);
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

-- ---- a secret being revoked takes no new binding and no rotation (finding 4); re-binding to another
-- ---- secret drops the old pin (finding 1) ----------------------------------------------------------

-- Same signature as 20261125211700_secrets.sql (the grants stay; re-stated below).
create or replace function public.deployment_secrets__bind(
  p_deployment_id uuid,
  p_env_var text,
  p_secret_id uuid,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_deployment public.deployments%rowtype;
  v_secret public.secrets%rowtype;
  v_revocation uuid;
  v_pin integer;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  perform public.input__check_env_var(p_env_var);
  perform public.input__check_required('secret_id', p_secret_id);
  select * into v_deployment from public.deployments d where d.id = p_deployment_id for share;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  if v_deployment.status in ('deprovisioning', 'deleted') then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'deployment_id: deployment %s is %s; its bindings can no longer change', p_deployment_id, v_deployment.status);
  end if;
  select * into v_secret from public.secrets s where s.id = p_secret_id for share;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  if v_secret.org_id <> v_deployment.org_id then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'secret_id: secret %s belongs to another organization than deployment %s', p_secret_id, p_deployment_id);
  end if;
  if v_secret.deployment_id is not null and v_secret.deployment_id <> p_deployment_id then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'secret_id: secret %s is scoped to another deployment; bind an org-wide secret or one scoped to deployment %s',
      p_secret_id, p_deployment_id);
  end if;
  if v_secret.status <> 'active' then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'secret_id: secret %s is %s; bind an active secret', p_secret_id, v_secret.status);
  end if;
  -- a whole-secret revocation listed the bound deployments when it started: a binding made now
  -- would give a host the key with nothing left to take it off (finding 4)
  select r.id into v_revocation from public.secret_revocations r
  where r.secret_id = p_secret_id and r.state = 'open' and r.deployment_id is null;
  if found then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'secret_id: secret %s is being revoked (revocation %s); bind another secret', p_secret_id, v_revocation);
  end if;

  -- a pin is a version of the secret it was set on: re-pointed to another secret, the binding
  -- follows that secret's current version (finding 1)
  insert into public.deployment_secrets as b (deployment_id, env_var, secret_id)
  values (p_deployment_id, p_env_var, p_secret_id)
  on conflict (deployment_id, env_var) do update set
    secret_id = excluded.secret_id,
    version = case when b.secret_id = excluded.secret_id then b.version end,
    updated_at = now()
  returning b.version into v_pin;

  perform public.secret_access_log__append('bind', 'success', v_deployment.org_id, p_deployment_id, p_secret_id,
    coalesce(v_pin, v_secret.current_version), 'env_var ' || p_env_var, p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object('deployment_id', p_deployment_id, 'env_var', p_env_var, 'secret_id', p_secret_id);
end
$$;

-- Same signature and body as 20261201120000_rotation.sql, one refusal more: a secret with an open
-- whole-secret revocation is not rotated (its bound deployments are being taken off it).
create or replace function public.secret_rotations__start(
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
  select r.id into v_running from public.secret_revocations r
  where r.secret_id = p_secret_id and r.state = 'open' and r.deployment_id is null;
  if found then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'secret_id: secret %s is being revoked (revocation %s); it cannot be rotated', p_secret_id, v_running);
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

-- ---- grants -------------------------------------------------------------------------------------

do $$
declare
  f text;
begin
  foreach f in array array[
    'public.secrets__request_revoke(uuid, uuid, uuid, text, text, inet, text)',
    'public.secret_revocations__get(uuid)',
    'public.secret_revocations__finish(uuid, boolean, jsonb)',
    'public.secret_revocations__list_open(integer)',
    'public.secrets__revoke(uuid, uuid, text, text, inet, text)',
    'public.deployment_secrets__revoke(uuid, uuid, uuid, text, text, inet, text)',
    'public.deployment_secrets__bind(uuid, text, uuid, text, text, inet, text)',
    'public.secret_rotations__start(uuid, uuid, text, text, integer, boolean, text, text, inet, text, uuid)'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute pg_catalog.format('grant execute on function %s to cortex_orchestrator', f);
  end loop;
end
$$;
