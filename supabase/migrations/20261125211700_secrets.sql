-- Customer secrets: metadata here, values in Supabase Vault (vault.secrets), one vault secret per
-- version. No table in this schema ever holds a value. deployment_secrets__read is the one place a
-- value is read, and every read, denial and change is written to secret_access_log in the same
-- transaction.

create table public.secrets (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id),
  deployment_id uuid,
  name text not null check (pg_catalog.char_length(name) between 1 and 200),
  provider text not null check (provider ~ '^[a-z][a-z0-9_-]{0,31}$'),
  display_prefix text not null,
  fingerprint text not null check (fingerprint ~ '^[0-9a-f]{64}$'),
  current_version integer not null default 1 check (current_version >= 1),
  status text not null default 'active' check (status in ('active', 'revoked', 'deleted')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  revoked_at timestamptz,
  deleted_at timestamptz,
  -- a deployment-scoped secret belongs to its deployment's org (null deployment: org-wide)
  foreign key (deployment_id, org_id) references public.deployments (id, org_id)
);
create unique index secrets_scope_name_key on public.secrets
  (org_id, coalesce(deployment_id, '00000000-0000-0000-0000-000000000000'::uuid), name)
  where status = 'active';
create index secrets_org_id_idx on public.secrets (org_id);
create index secrets_deployment_id_idx on public.secrets (deployment_id, org_id);

create table public.secret_versions (
  secret_id uuid not null references public.secrets (id),
  version integer not null check (version >= 1),
  -- a reference into vault.secrets; that row is deleted when the version is retired
  vault_secret_id uuid not null unique,
  display_prefix text not null,
  fingerprint text not null check (fingerprint ~ '^[0-9a-f]{64}$'),
  created_at timestamptz not null default now(),
  retired_at timestamptz,
  primary key (secret_id, version)
);

create table public.deployment_secrets (
  deployment_id uuid not null references public.deployments (id) on delete cascade,
  env_var text not null check (env_var ~ '^[A-Z_][A-Z0-9_]*$' and pg_catalog.char_length(env_var) <= 128),
  secret_id uuid not null references public.secrets (id),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (deployment_id, env_var)
);
create index deployment_secrets_secret_id_idx on public.deployment_secrets (secret_id);

-- ---- internal helpers ---------------------------------------------------------------------------

-- Stores a value in the vault without ever putting it in a table row in clear. supabase_vault
-- 0.3's create_secret INSERTs its argument and then UPDATEs it to ciphertext, so the value would
-- sit in a dead tuple (until vacuum) and in the WAL (and its archives and replicas). Here
-- create_secret only ever sees a random placeholder, and the value goes in through update_secret,
-- which writes ciphertext in its UPDATE. What remains: the value's ciphertext shares the row's
-- nonce with the placeholder's (update_secret keeps the nonce); 0.3's cipher is deterministic
-- XChaCha20-SIV, which under a repeated nonce reveals only whether two plaintexts are equal, and
-- a 122-bit random placeholder equals no value. The value still travels as an argument (a bind
-- parameter from both adapters, never a logged literal). One extra UPDATE per stored value.
create function public.vault__store(p_value text, p_name text, p_description text)
returns uuid
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id uuid;
begin
  v_id := vault.create_secret('cortex-placeholder:' || pg_catalog.gen_random_uuid()::text, p_name, p_description);
  perform vault.update_secret(v_id, p_value);
  return v_id;
end
$$;

-- The fingerprint org members see: HMAC-SHA256 under a key they never see, so that a short or
-- guessable value cannot be confirmed by hashing guesses (an unkeyed SHA-256 gave such values
-- away). The key is 32 random bytes kept in the vault (`cortex:fingerprint-key:v1`), i.e.
-- encrypted under the vault's root key, which is outside the database (locally the root key file,
-- on a hosted project Supabase's server key); it is created here once and never returned.
-- Whoever can read the vault can compute fingerprints, and could read the values anyway.
create function public.secrets__fingerprint_key()
returns bytea
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hex text;
begin
  select ds.decrypted_secret into v_hex from vault.decrypted_secrets ds where ds.name = 'cortex:fingerprint-key:v1';
  if v_hex is null or v_hex !~ '^[0-9a-f]{64}$' then
    raise exception using errcode = 'XX000', message = 'the fingerprint key (vault secret cortex:fingerprint-key:v1) is missing';
  end if;
  return pg_catalog.decode(v_hex, 'hex');
end
$$;

create function public.secrets__fingerprint(p_value text)
returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.encode(
    extensions.hmac(pg_catalog.convert_to(p_value, 'UTF8'), public.secrets__fingerprint_key(), 'sha256'), 'hex')
$$;

do $$
begin
  if not exists (select 1 from vault.secrets s where s.name = 'cortex:fingerprint-key:v1') then
    perform public.vault__store(pg_catalog.encode(extensions.gen_random_bytes(32), 'hex'), 'cortex:fingerprint-key:v1',
      'cortex: HMAC-SHA256 key of the secret fingerprints org members see');
  end if;
end
$$;

-- A customer value: as input__check_text, and at least 20 characters. Real provider keys are far
-- longer (OpenAI and Anthropic keys are 50 to 110 characters); anything shorter is a mistake, and
-- even a keyed fingerprint of it would be a small search space for whoever holds the key.
create function public.secrets__check_value(p_value text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_text('value', p_value, 4096);
  if pg_catalog.char_length(p_value) < 20 then
    raise exception using errcode = '22023', message = 'value: must be at least 20 characters (no real API key is shorter)';
  end if;
end
$$;

-- What may be shown of a value: `sk-ant-…ab12` for a real key. Shorter values show less, so that at
-- least twelve characters always stay hidden.
create function public.secrets__describe_value(p_value text, out display_prefix text, out fingerprint text)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select
    pg_catalog.left(p_value, least(7, greatest(pg_catalog.char_length(p_value) - 16, 0)))
      || '…'
      || case when pg_catalog.char_length(p_value) >= 16 then pg_catalog.right(p_value, 4) else '' end,
    public.secrets__fingerprint(p_value)
$$;

-- The vault name carries the scope, so names of two orgs (or deployments) can never collide.
create function public.secrets__vault_name(p_org_id uuid, p_deployment_id uuid, p_secret_id uuid, p_version integer)
returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select 'org:' || p_org_id::text
    || case when p_deployment_id is null then '' else ':deployment:' || p_deployment_id::text end
    || ':secret:' || p_secret_id::text || ':v' || p_version::text
$$;

create function public.input__check_env_var(p_env_var text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_env_var is null or p_env_var !~ '^[A-Z_][A-Z0-9_]*$' then
    raise exception using errcode = '22023', message = 'env_var: must match ^[A-Z_][A-Z0-9_]*$';
  end if;
  if pg_catalog.char_length(p_env_var) > 128 then
    raise exception using errcode = '22023', message = 'env_var: must be at most 128 characters';
  end if;
end
$$;

-- A deployment reaches `deleted` only once its secrets and bindings are gone.
create function public.deployments__guard_deleted()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if new.status = 'deleted' and old.status is distinct from 'deleted' and (
    exists (select 1 from public.secrets s where s.deployment_id = new.id and s.status <> 'deleted')
    or exists (select 1 from public.deployment_secrets b where b.deployment_id = new.id)
  ) then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'status: deployment %s still has secrets or bindings; call secrets__delete_for_deployment first', new.id);
  end if;
  return new;
end
$$;

create trigger deployments_guard_deleted
  before update of status on public.deployments
  for each row execute function public.deployments__guard_deleted();

revoke all on function public.secrets__describe_value(text) from public, anon, authenticated, service_role;
revoke all on function public.vault__store(text, text, text) from public, anon, authenticated, service_role;
revoke all on function public.secrets__fingerprint_key() from public, anon, authenticated, service_role;
revoke all on function public.secrets__fingerprint(text) from public, anon, authenticated, service_role;
revoke all on function public.secrets__check_value(text) from public, anon, authenticated, service_role;
revoke all on function public.secrets__vault_name(uuid, uuid, uuid, integer) from public, anon, authenticated, service_role;
revoke all on function public.input__check_env_var(text) from public, anon, authenticated, service_role;
revoke all on function public.deployments__guard_deleted() from public, anon, authenticated, service_role;

-- ---- functions (the contract) -------------------------------------------------------------------

create function public.secrets__create(
  p_org_id uuid,
  p_name text,
  p_provider text,
  p_value text,
  p_deployment_id uuid default null,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret_id uuid := gen_random_uuid();
  v_deployment public.deployments%rowtype;
  v_described record;
  v_vault_name text;
  v_vault_id uuid;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('org_id', p_org_id);
  perform public.input__check_text('name', p_name, 200);
  if p_provider is null or p_provider !~ '^[a-z][a-z0-9_-]{0,31}$' then
    raise exception using errcode = '22023',
      message = 'provider: must be a lowercase provider name such as anthropic, openai or other';
  end if;
  perform public.secrets__check_value(p_value);
  if not exists (select 1 from public.organizations o where o.id = p_org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('organization %s not found', p_org_id);
  end if;
  if p_deployment_id is not null then
    select * into v_deployment from public.deployments d where d.id = p_deployment_id for share;
    if not found then
      raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
    end if;
    if v_deployment.org_id <> p_org_id then
      raise exception using errcode = '22023', message = pg_catalog.format(
        'deployment_id: deployment %s belongs to another organization; scope the secret to a deployment of organization %s',
        p_deployment_id, p_org_id);
    end if;
    if v_deployment.status in ('deprovisioning', 'deleted') then
      raise exception using errcode = '22023', message = pg_catalog.format(
        'deployment_id: deployment %s is %s; secrets can no longer be added to it', p_deployment_id, v_deployment.status);
    end if;
  end if;
  if exists (
    select 1 from public.secrets s
    where s.org_id = p_org_id and s.deployment_id is not distinct from p_deployment_id
      and s.name = p_name and s.status = 'active'
  ) then
    raise exception using errcode = '23505',
      message = 'name: an active secret with this name already exists in this scope; add a version to it instead';
  end if;

  select * into v_described from public.secrets__describe_value(p_value);
  v_vault_name := public.secrets__vault_name(p_org_id, p_deployment_id, v_secret_id, 1);
  v_vault_id := public.vault__store(p_value, v_vault_name, pg_catalog.format('cortex secret %s version 1', v_secret_id));

  insert into public.secrets (id, org_id, deployment_id, name, provider, display_prefix, fingerprint)
  values (v_secret_id, p_org_id, p_deployment_id, p_name, p_provider, v_described.display_prefix, v_described.fingerprint);
  insert into public.secret_versions (secret_id, version, vault_secret_id, display_prefix, fingerprint)
  values (v_secret_id, 1, v_vault_id, v_described.display_prefix, v_described.fingerprint);

  perform public.secret_access_log__append('create', 'success', p_org_id, p_deployment_id, v_secret_id, 1, null,
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object(
    'secret_id', v_secret_id,
    'version', 1,
    'display_prefix', v_described.display_prefix,
    'fingerprint', v_described.fingerprint,
    'vault_name', v_vault_name);
end
$$;

create function public.secrets__add_version(
  p_secret_id uuid,
  p_value text,
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
  v_version integer;
  v_described record;
  v_vault_id uuid;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('secret_id', p_secret_id);
  perform public.secrets__check_value(p_value);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  if v_secret.status <> 'active' then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'secret_id: secret %s is %s; create a new secret instead', p_secret_id, v_secret.status);
  end if;

  select coalesce(max(v.version), 0) + 1 into v_version from public.secret_versions v where v.secret_id = p_secret_id;
  select * into v_described from public.secrets__describe_value(p_value);
  v_vault_id := public.vault__store(
    p_value,
    public.secrets__vault_name(v_secret.org_id, v_secret.deployment_id, p_secret_id, v_version),
    pg_catalog.format('cortex secret %s version %s', p_secret_id, v_version));

  insert into public.secret_versions (secret_id, version, vault_secret_id, display_prefix, fingerprint)
  values (p_secret_id, v_version, v_vault_id, v_described.display_prefix, v_described.fingerprint);
  update public.secrets s
  set current_version = v_version, display_prefix = v_described.display_prefix,
      fingerprint = v_described.fingerprint, updated_at = now()
  where s.id = p_secret_id;

  perform public.secret_access_log__append('rotate', 'success', v_secret.org_id, v_secret.deployment_id, p_secret_id,
    v_version, pg_catalog.format('version %s added; version %s stays until retired', v_version, v_secret.current_version),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object(
    'secret_id', p_secret_id,
    'version', v_version,
    'display_prefix', v_described.display_prefix,
    'fingerprint', v_described.fingerprint);
end
$$;

create function public.secret_versions__retire(
  p_secret_id uuid,
  p_version integer,
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
  v_row public.secret_versions%rowtype;
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

create function public.secrets__revoke(
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
  v_secret public.secrets%rowtype;
  v_vault_deleted bigint;
  v_unbound bigint;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('secret_id', p_secret_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  if v_secret.status <> 'active' then
    return pg_catalog.jsonb_build_object(
      'secret_id', p_secret_id, 'status', v_secret.status, 'vault_secrets_deleted', 0, 'bindings_removed', 0);
  end if;

  delete from vault.secrets vs
  where vs.id in (select v.vault_secret_id from public.secret_versions v where v.secret_id = p_secret_id);
  get diagnostics v_vault_deleted = row_count;
  update public.secret_versions v set retired_at = now() where v.secret_id = p_secret_id and v.retired_at is null;
  delete from public.deployment_secrets b where b.secret_id = p_secret_id;
  get diagnostics v_unbound = row_count;
  update public.secrets s set status = 'revoked', revoked_at = now(), updated_at = now() where s.id = p_secret_id;

  perform public.secret_access_log__append('revoke', 'success', v_secret.org_id, v_secret.deployment_id, p_secret_id,
    v_secret.current_version,
    pg_catalog.format('%s vault secrets deleted, %s bindings removed', v_vault_deleted, v_unbound),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object(
    'secret_id', p_secret_id, 'status', 'revoked', 'vault_secrets_deleted', v_vault_deleted,
    'bindings_removed', v_unbound);
end
$$;

create function public.deployment_secrets__bind(
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

  insert into public.deployment_secrets (deployment_id, env_var, secret_id)
  values (p_deployment_id, p_env_var, p_secret_id)
  on conflict (deployment_id, env_var) do update set secret_id = excluded.secret_id, updated_at = now();

  perform public.secret_access_log__append('bind', 'success', v_deployment.org_id, p_deployment_id, p_secret_id,
    v_secret.current_version, 'env_var ' || p_env_var, p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object('deployment_id', p_deployment_id, 'env_var', p_env_var, 'secret_id', p_secret_id);
end
$$;

create function public.deployment_secrets__unbind(
  p_deployment_id uuid,
  p_env_var text,
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
  v_secret_id uuid;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  perform public.input__check_env_var(p_env_var);
  select * into v_deployment from public.deployments d where d.id = p_deployment_id for share;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  delete from public.deployment_secrets b
  where b.deployment_id = p_deployment_id and b.env_var = p_env_var
  returning b.secret_id into v_secret_id;
  -- nothing bound: nothing changed, nothing to audit
  if v_secret_id is not null then
    perform public.secret_access_log__append('unbind', 'success', v_deployment.org_id, p_deployment_id, v_secret_id,
      null, 'env_var ' || p_env_var, p_actor, p_job_id, p_request_ip, p_user_agent);
  end if;
  return pg_catalog.jsonb_build_object(
    'deployment_id', p_deployment_id, 'env_var', p_env_var, 'secret_id', v_secret_id, 'unbound', v_secret_id is not null);
end
$$;

-- THE one place a secret value is read. Entitlement: the deployment exists and is neither
-- deprovisioning nor deleted; each secret is bound to it, of its org, org-wide or scoped to it, and
-- active. A refusal returns {"status":"denied"} instead of raising, so that its audit rows commit
-- with the caller's transaction; it returns no value at all. A success writes one `read` row per
-- value returned, in the same transaction as the read.
create function public.deployment_secrets__read(
  p_deployment_id uuid,
  p_secret_ids uuid[] default null,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null,
  p_intent_id uuid default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_deployment public.deployments%rowtype;
  v_reason text;
  v_denial text;
  v_requested uuid;
  v_secret public.secrets%rowtype;
  v_binding record;
  v_value text;
  v_values jsonb := '[]'::jsonb;
  v_entry jsonb;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_secret_ids is not null and pg_catalog.array_position(p_secret_ids, null) is not null then
    raise exception using errcode = '22023', message = 'secret_ids: must not contain null';
  end if;

  select * into v_deployment from public.deployments d where d.id = p_deployment_id for share;
  if not found or v_deployment.status in ('deprovisioning', 'deleted') then
    v_reason := case when v_deployment.id is null then 'not found' else 'is ' || v_deployment.status end;
    -- one row per secret asked for (one row with no secret when all were asked for)
    foreach v_requested in array coalesce(p_secret_ids, array[null]::uuid[]) loop
      perform public.secret_access_log__append('read', 'denied', v_deployment.org_id, p_deployment_id, v_requested,
        null, 'deployment ' || v_reason, p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object(
      'status', 'denied', 'reason', pg_catalog.format('deployment %s %s', p_deployment_id, v_reason));
  end if;

  -- every requested secret must pass, or nothing is read
  for v_requested in
    select distinct x.id from pg_catalog.unnest(p_secret_ids) as x(id)
    union
    select b.secret_id from public.deployment_secrets b where p_secret_ids is null and b.deployment_id = p_deployment_id
  loop
    select * into v_secret from public.secrets s where s.id = v_requested for share;
    v_reason := case
      when not found then 'not found'
      when v_secret.org_id <> v_deployment.org_id then 'belongs to another organization'
      when v_secret.status <> 'active' then 'is ' || v_secret.status
      when v_secret.deployment_id is not null and v_secret.deployment_id <> p_deployment_id
        then 'is scoped to another deployment'
      when not exists (
        select 1 from public.deployment_secrets b where b.deployment_id = p_deployment_id and b.secret_id = v_requested
      ) then 'is not bound to this deployment'
    end;
    if v_reason is not null then
      perform public.secret_access_log__append('read', 'denied', v_deployment.org_id, p_deployment_id, v_requested,
        null, 'secret ' || v_reason, p_actor, p_job_id, p_request_ip, p_user_agent);
      v_denial := coalesce(v_denial, pg_catalog.format('secret %s %s', v_requested, v_reason));
    end if;
  end loop;
  if v_denial is not null then
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason', v_denial);
  end if;

  for v_binding in
    select b.env_var, s.id as secret_id, s.current_version, v.vault_secret_id
    from public.deployment_secrets b
    join public.secrets s on s.id = b.secret_id
    join public.secret_versions v on v.secret_id = s.id and v.version = s.current_version
    where b.deployment_id = p_deployment_id and (p_secret_ids is null or b.secret_id = any (p_secret_ids))
    order by b.env_var
  loop
    begin
      select ds.decrypted_secret into v_value from vault.decrypted_secrets ds where ds.id = v_binding.vault_secret_id;
    exception when others then
      -- a vault row that fails to decrypt is reported, never echoed
      v_value := null;
    end;
    if v_value is null then
      perform public.secret_access_log__append('read', 'error', v_deployment.org_id, p_deployment_id,
        v_binding.secret_id, v_binding.current_version, 'vault secret missing or unreadable',
        p_actor, p_job_id, p_request_ip, p_user_agent);
      return pg_catalog.jsonb_build_object('status', 'error', 'reason', pg_catalog.format(
        'secret %s version %s: vault secret missing or unreadable', v_binding.secret_id, v_binding.current_version));
    end if;
    v_values := v_values || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
      'env_var', v_binding.env_var, 'secret_id', v_binding.secret_id,
      'version', v_binding.current_version, 'value', v_value));
  end loop;

  -- audit rows last: either every value is returned and logged, or none is returned
  for v_entry in select e from pg_catalog.jsonb_array_elements(v_values) as t(e) loop
    perform public.secret_access_log__append('read', 'success', v_deployment.org_id, p_deployment_id,
      (v_entry ->> 'secret_id')::uuid, (v_entry ->> 'version')::integer, 'env_var ' || (v_entry ->> 'env_var'),
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('status', 'ok', 'secrets', v_values);
end
$$;

create function public.secrets__delete_for_deployment(
  p_deployment_id uuid,
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
  v_binding record;
  v_secret public.secrets%rowtype;
  v_deleted integer := 0;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  select * into v_deployment from public.deployments d where d.id = p_deployment_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;

  for v_binding in
    delete from public.deployment_secrets b where b.deployment_id = p_deployment_id
    returning b.env_var, b.secret_id
  loop
    perform public.secret_access_log__append('unbind', 'success', v_deployment.org_id, p_deployment_id,
      v_binding.secret_id, null, 'env_var ' || v_binding.env_var, p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;

  for v_secret in
    select * from public.secrets s
    where s.deployment_id = p_deployment_id and s.status <> 'deleted'
    order by s.created_at, s.id
    for update
  loop
    delete from vault.secrets vs
    where vs.id in (select v.vault_secret_id from public.secret_versions v where v.secret_id = v_secret.id);
    update public.secret_versions v set retired_at = now() where v.secret_id = v_secret.id and v.retired_at is null;
    update public.secrets s set status = 'deleted', deleted_at = now(), updated_at = now() where s.id = v_secret.id;
    perform public.secret_access_log__append('delete', 'success', v_deployment.org_id, p_deployment_id, v_secret.id,
      v_secret.current_version, 'deployment secrets deleted', p_actor, p_job_id, p_request_ip, p_user_agent);
    v_deleted := v_deleted + 1;
  end loop;
  return pg_catalog.jsonb_build_object('deleted', v_deleted);
end
$$;

revoke all on function public.secrets__create(uuid, text, text, text, uuid, text, text, inet, text)
  from public, anon, authenticated, service_role;
revoke all on function public.secrets__add_version(uuid, text, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.secret_versions__retire(uuid, integer, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.secrets__revoke(uuid, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.deployment_secrets__bind(uuid, text, uuid, text, text, inet, text)
  from public, anon, authenticated, service_role;
revoke all on function public.deployment_secrets__unbind(uuid, text, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid) from public, anon, authenticated, service_role;
revoke all on function public.secrets__delete_for_deployment(uuid, text, text, inet, text) from public, anon, authenticated, service_role;
grant execute on function public.secrets__create(uuid, text, text, text, uuid, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.secrets__add_version(uuid, text, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.secret_versions__retire(uuid, integer, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.secrets__revoke(uuid, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.deployment_secrets__bind(uuid, text, uuid, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.deployment_secrets__unbind(uuid, text, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid) to cortex_orchestrator;
grant execute on function public.secrets__delete_for_deployment(uuid, text, text, inet, text) to cortex_orchestrator;

-- ---- row-level security -------------------------------------------------------------------------

alter table public.secrets enable row level security;
alter table public.secret_versions enable row level security;
alter table public.deployment_secrets enable row level security;

create policy secrets_select_member on public.secrets
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));

create policy secret_versions_select_member on public.secret_versions
  for select to authenticated
  using (secret_id in (
    select s.id from public.secrets s
    join public.organization_members m on m.org_id = s.org_id
    where m.user_id = (select auth.uid())));

create policy deployment_secrets_select_member on public.deployment_secrets
  for select to authenticated
  using (deployment_id in (
    select d.id from public.deployments d
    join public.organization_members m on m.org_id = d.org_id
    where m.user_id = (select auth.uid())));

revoke all on table public.secrets, public.secret_versions, public.deployment_secrets
  from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.secrets, public.secret_versions, public.deployment_secrets to authenticated;
-- No API role writes a table (a repointed vault_secret_id would read another org's key): service_role
-- may read the metadata; the orchestrator's role holds no table privilege at all.
grant select on table public.secrets, public.secret_versions, public.deployment_secrets to service_role;
