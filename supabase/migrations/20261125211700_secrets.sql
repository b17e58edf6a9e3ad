-- Customer secrets: metadata here, values in Supabase Vault (vault.secrets), one vault secret per
-- version. No table in this schema ever holds a value. deployment_secrets__read is the one place a
-- value is read, and every read, denial and change is written to secret_access_log in the same
-- transaction.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

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
--
-- And its fingerprint, which the caller computes: HMAC-SHA256 of the value (UTF-8) under a key
-- kept OUTSIDE the database, by the orchestrator (FINGERPRINT_KEY_FILE), as 64 lowercase hex
-- digits. An unkeyed SHA-256 would give a short or guessable value away to anyone who can read the
-- metadata (org members among them), and a key inside the database would hand the same search to
-- whoever can read the database. No function here can compute a fingerprint; this one checks its
-- shape, and refuses the value's plain SHA-256 (a caller that forgot the key). A caller holding
-- cortex_orchestrator can still store a false fingerprint: misleading metadata, never a value.
create function public.secrets__describe_value(p_value text, p_fingerprint text, out display_prefix text, out fingerprint text)
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_fingerprint is null or p_fingerprint !~ '^[0-9a-f]{64}$' then
    raise exception using errcode = '22023', message =
      'fingerprint: must be the HMAC-SHA256 of the value under the orchestrator''s fingerprint key, as 64 lowercase hex digits';
  end if;
  if p_fingerprint = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_value, 'UTF8')), 'hex') then
    raise exception using errcode = '22023', message =
      'fingerprint: is the unkeyed SHA-256 of the value; give its HMAC-SHA256 under the fingerprint key';
  end if;
  display_prefix := pg_catalog.left(p_value, least(7, greatest(pg_catalog.char_length(p_value) - 16, 0)))
    || '…'
    || case when pg_catalog.char_length(p_value) >= 16 then pg_catalog.right(p_value, 4) else '' end;
  fingerprint := p_fingerprint;
end
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

revoke all on function public.secrets__describe_value(text, text) from public, anon, authenticated, service_role;
revoke all on function public.vault__store(text, text, text) from public, anon, authenticated, service_role;
revoke all on function public.secrets__check_value(text) from public, anon, authenticated, service_role;
revoke all on function public.secrets__vault_name(uuid, uuid, uuid, integer) from public, anon, authenticated, service_role;
revoke all on function public.input__check_env_var(text) from public, anon, authenticated, service_role;
revoke all on function public.deployments__guard_deleted() from public, anon, authenticated, service_role;

-- ---- read intents ------------------------------------------------------------------------------
-- A committed trace of every read, even one whose transaction never commits.
--
-- A read's audit rows are written in the read's transaction, so `begin; select
-- deployment_secrets__read(…); rollback;` returned the values and left nothing. No write made
-- inside that transaction can survive its rollback (short of an autonomous connection, which would
-- need a password stored in the database on a hosted project). So the trace is written first, in
-- a transaction of its own: the caller records an intent (deployment_secrets__intend_read or
-- platform_secrets__intend_read), that transaction commits, and the read then returns values only
-- when it is handed an intent that
--   - names the same deployment (and covers the secrets asked for) or the same platform secret,
--   - is at most 60 seconds old, and
--   - was committed by another transaction: pg_xact_status of the transaction that wrote it is
--     'committed' (an intent written in the read's own transaction, or one of its savepoints, is
--     still 'in progress' and is refused).
-- A read that commits names its intent in its audit rows ("…; intent <id>"). An intent with no
-- such read is a read that was attempted and rolled back, or never made: the log cannot tell which,
-- nor how many rolled-back reads one intent covered within its 60 seconds; it shows who, what, and
-- when. Denials need no intent (they return no value) and are audited as before.
--
-- The intents table is append-only like the log (only retention removes rows) and has no foreign
-- key: an intent outlives what it names. Intents are not hash-chained: writing one takes no chain
-- lock, so it never waits for a read of the same organisation.

create table public.secret_read_intents (
  id uuid primary key default gen_random_uuid(),
  at timestamptz not null default clock_timestamp(),
  org_id uuid,
  deployment_id uuid,
  platform_name text,
  secret_ids uuid[] check (secret_ids is null or pg_catalog.cardinality(secret_ids) between 1 and 100),
  actor text,
  job_id text,
  request_ip inet,
  user_agent text,
  -- the transaction that wrote the intent: the read requires it committed
  xact xid8 not null,
  check ((deployment_id is null) <> (platform_name is null))
);
create index secret_read_intents_deployment_id_idx on public.secret_read_intents (deployment_id) where deployment_id is not null;
create index secret_read_intents_at_idx on public.secret_read_intents (at);

create function public.secret_read_intents__refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  -- only retention removes intents (see secret_access_log__refuse_change)
  if tg_op = 'DELETE' and current_user = 'cortex_audit_retention' then
    return old;
  end if;
  raise exception using errcode = '42501', message = pg_catalog.format(
    'secret_read_intents is append-only: %s refused', pg_catalog.lower(tg_op));
end
$$;

create trigger secret_read_intents_append_only
  before update or delete on public.secret_read_intents
  for each row execute function public.secret_read_intents__refuse_change();
create trigger secret_read_intents_no_truncate
  before truncate on public.secret_read_intents
  for each statement execute function public.secret_read_intents__refuse_change();

-- Internal: is p_intent_id a committed, fresh intent for this read? Exactly one of p_deployment_id
-- and p_platform_name is given.
create function public.secret_read_intents__valid(
  p_intent_id uuid,
  p_deployment_id uuid,
  p_secret_ids uuid[],
  p_platform_name text
) returns boolean
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select p_intent_id is not null and exists (
    select 1 from public.secret_read_intents i
    where i.id = p_intent_id
      and i.deployment_id is not distinct from p_deployment_id
      and i.platform_name is not distinct from p_platform_name
      and (i.secret_ids is null or (p_secret_ids is not null and p_secret_ids <@ i.secret_ids))
      and i.at > pg_catalog.clock_timestamp() - interval '60 seconds'
      and pg_catalog.pg_xact_status(i.xact) = 'committed')
$$;

revoke all on function public.secret_read_intents__refuse_change() from public, anon, authenticated, service_role;
revoke all on function public.secret_read_intents__valid(uuid, uuid, uuid[], text) from public, anon, authenticated, service_role;

-- ---- functions (the contract) -------------------------------------------------------------------

create function public.secrets__create(
  p_org_id uuid,
  p_name text,
  p_provider text,
  p_value text,
  p_fingerprint text,
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

  select * into v_described from public.secrets__describe_value(p_value, p_fingerprint);
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
  p_fingerprint text,
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
  select * into v_described from public.secrets__describe_value(p_value, p_fingerprint);
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
-- with the caller's transaction; it returns no value at all. Values are returned only against a
-- committed read intent (above). A success writes one `read` row per value returned, in the same
-- transaction as the read.
--
-- Locks: the deployment, then each requested secret FOR SHARE in id order, so that a status
-- change, revoke or rotation either waits for this read to commit or is seen by it. Every check
-- comes first, then every value is decrypted in one statement, and the audit rows (successes,
-- denials or the error) are appended only after that: the org's chain head, which every reader and
-- writer of the org waits for, is locked by the last statements of the transaction. Its statements
-- are plain lookups that keep a cached plan.
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
  v_org_id uuid;
  v_status text;
  v_reason text;
  v_ids uuid[];
  v_id uuid;
  v_secret record;
  v_denied uuid[] := array[]::uuid[];
  v_reasons text[] := array[]::text[];
  v_owners uuid[] := array[]::uuid[];
  v_denial record;
  v_values jsonb;
  v_missing jsonb;
  v_binding record;
  v_value text;
  v_entry jsonb;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_secret_ids is not null and pg_catalog.array_position(p_secret_ids, null) is not null then
    raise exception using errcode = '22023', message = 'secret_ids: must not contain null';
  end if;
  -- a read writes at most one audit row per secret asked for (two for another org's): bounded here
  if pg_catalog.cardinality(p_secret_ids) > 100 then
    raise exception using errcode = '22023', message = 'secret_ids: at most 100 per read';
  end if;

  select d.org_id, d.status into v_org_id, v_status from public.deployments d where d.id = p_deployment_id for share;
  if not found or v_status in ('deprovisioning', 'deleted') then
    v_reason := case when v_status is null then 'not found' else 'is ' || v_status end;
    -- one row per secret asked for (one row with no secret when all were asked for)
    foreach v_id in array coalesce(p_secret_ids, array[null]::uuid[]) loop
      perform public.secret_access_log__append('read', 'denied', v_org_id, p_deployment_id, v_id,
        null, 'deployment ' || v_reason, p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object(
      'status', 'denied', 'reason', pg_catalog.format('deployment %s %s', p_deployment_id, v_reason));
  end if;

  -- Entitlement of every secret asked for (every bound one when none is named), each locked FOR
  -- SHARE so that a revoke or rotation waits for this read to commit, or this read sees it.
  -- Every requested secret must pass, or nothing is read. Locked in id order (see above): a read
  -- may name, and so lock, secrets that another function locks too.
  if p_secret_ids is null then
    select pg_catalog.array_agg(distinct b.secret_id order by b.secret_id) into v_ids
    from public.deployment_secrets b where b.deployment_id = p_deployment_id;
  else
    select pg_catalog.array_agg(distinct x.id order by x.id) into v_ids
    from pg_catalog.unnest(p_secret_ids) as x(id);
  end if;
  foreach v_id in array coalesce(v_ids, array[]::uuid[]) loop
    select s.org_id, s.status, s.deployment_id into v_secret from public.secrets s where s.id = v_id for share;
    v_reason := case
      when not found then 'not found'
      when v_secret.org_id <> v_org_id then 'belongs to another organization'
      when v_secret.status <> 'active' then 'is ' || v_secret.status
      when v_secret.deployment_id is not null and v_secret.deployment_id <> p_deployment_id
        then 'is scoped to another deployment'
      -- the ids of a read of everything bound came from the bindings
      when p_secret_ids is not null and not exists (
        select 1 from public.deployment_secrets b where b.deployment_id = p_deployment_id and b.secret_id = v_id
      ) then 'is not bound to this deployment'
    end;
    if v_reason is not null then
      v_denied := v_denied || v_id;
      v_reasons := v_reasons || v_reason;
      v_owners := v_owners || case when v_reason = 'belongs to another organization' then v_secret.org_id end;
    end if;
  end loop;
  if pg_catalog.cardinality(v_denied) > 0 then
    -- Audit rows last: the chain lock is taken once every check is done. A secret of another
    -- organization is refused in both chains: the requester's row does not name the owner's
    -- secret, and the owner's row names neither the requesting deployment nor anything else of
    -- the requester's. Two chains are locked in chain id order, so two organizations asking for
    -- each other's secrets at once cannot deadlock.
    for v_denial in
      select x.org, x.dep, x.sid, x.reason from (
        select v_org_id as org, p_deployment_id as dep,
               case when d.owner is null then d.id end as sid, 'secret ' || d.reason as reason, d.ord, 0 as k
        from rows from (pg_catalog.unnest(v_denied), pg_catalog.unnest(v_reasons), pg_catalog.unnest(v_owners))
          with ordinality as d(id, reason, owner, ord)
        union all
        select d.owner, null::uuid, d.id, 'read refused: asked for by a deployment of another organization', d.ord, 1
        from rows from (pg_catalog.unnest(v_denied), pg_catalog.unnest(v_reasons), pg_catalog.unnest(v_owners))
          with ordinality as d(id, reason, owner, ord)
        where d.owner is not null
      ) x
      order by x.org, x.ord, x.k
    loop
      perform public.secret_access_log__append('read', 'denied', v_denial.org, v_denial.dep, v_denial.sid,
        null, v_denial.reason, p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object(
      'status', 'denied', 'reason', pg_catalog.format('secret %s %s', v_denied[1], v_reasons[1]));
  end if;

  -- Values only against a committed intent (read intents, in 20261125211700_secrets.sql): a read whose
  -- transaction rolls back leaves that intent behind. Denied, and audited, without one.
  if pg_catalog.cardinality(v_ids) > 0
     and not public.secret_read_intents__valid(p_intent_id, p_deployment_id, p_secret_ids, null) then
    foreach v_id in array v_ids loop
      perform public.secret_access_log__append('read', 'denied', v_org_id, p_deployment_id, v_id, null,
        'no committed read intent', p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason',
      'read intent missing, expired, for another read, or not committed: call deployment_secrets__intend_read in a transaction of its own first');
  end if;

  -- Every value in one statement. A vault row that fails to decrypt raises; the slow path below
  -- then finds which one. Either way its error is reported, never echoed.
  begin
    select
      pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'env_var', b.env_var, 'secret_id', s.id, 'version', s.current_version, 'value', ds.decrypted_secret)
        order by b.env_var) filter (where ds.decrypted_secret is not null),
      pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('secret_id', s.id, 'version', s.current_version)
        order by b.env_var) filter (where ds.decrypted_secret is null)
    into v_values, v_missing
    from public.deployment_secrets b
    join public.secrets s on s.id = b.secret_id
    join public.secret_versions v on v.secret_id = s.id and v.version = s.current_version
    -- the vault row must carry the name the scheme gives this version: a reference that points
    -- anywhere else (another org's key, a platform key) reads as missing
    left join vault.decrypted_secrets ds on ds.id = v.vault_secret_id
      and ds.name = public.secrets__vault_name(s.org_id, s.deployment_id, s.id, s.current_version)
    where b.deployment_id = p_deployment_id and b.secret_id = any (v_ids);
  exception when others then
    v_values := null;
    v_missing := null;
    for v_binding in
      select s.id as secret_id, s.current_version, v.vault_secret_id,
        public.secrets__vault_name(s.org_id, s.deployment_id, s.id, s.current_version) as vault_name
      from public.deployment_secrets b
      join public.secrets s on s.id = b.secret_id
      join public.secret_versions v on v.secret_id = s.id and v.version = s.current_version
      where b.deployment_id = p_deployment_id and b.secret_id = any (v_ids)
      order by b.env_var
    loop
      begin
        select ds.decrypted_secret into v_value from vault.decrypted_secrets ds
        where ds.id = v_binding.vault_secret_id and ds.name = v_binding.vault_name;
      exception when others then
        v_value := null;
      end;
      if v_value is null then
        v_missing := pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
          'secret_id', v_binding.secret_id, 'version', v_binding.current_version));
        exit;
      end if;
    end loop;
  end;
  if v_missing is not null then
    perform public.secret_access_log__append('read', 'error', v_org_id, p_deployment_id,
      (v_missing -> 0 ->> 'secret_id')::uuid, (v_missing -> 0 ->> 'version')::integer,
      'vault secret missing or unreadable', p_actor, p_job_id, p_request_ip, p_user_agent);
    return pg_catalog.jsonb_build_object('status', 'error', 'reason', pg_catalog.format(
      'secret %s version %s: vault secret missing or unreadable', v_missing -> 0 ->> 'secret_id',
      v_missing -> 0 ->> 'version'));
  end if;

  -- audit rows last, one per value returned: either every value is returned and logged, or none
  v_values := coalesce(v_values, '[]'::jsonb);
  for i in 0 .. pg_catalog.jsonb_array_length(v_values) - 1 loop
    v_entry := v_values -> i;
    perform public.secret_access_log__append('read', 'success', v_org_id, p_deployment_id,
      (v_entry ->> 'secret_id')::uuid, (v_entry ->> 'version')::integer,
      'env_var ' || (v_entry ->> 'env_var') || '; intent ' || p_intent_id::text,
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('status', 'ok', 'secrets', v_values);
end
$$;

-- Teardown, in lock order: the deployment, then its secrets in id order, then its bindings; every
-- audit row after the last change (the unbind rows in env_var order).
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
  v_env_vars text[];
  v_unbound uuid[];
  v_deleted uuid[];
  v_versions integer[];
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  -- FOR UPDATE: no secret can be scoped to it, and no binding added, until this commits
  select * into v_deployment from public.deployments d where d.id = p_deployment_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;

  -- lock order: its secrets in id order, then its bindings in key order, then (audit rows) the chain
  perform 1 from public.secrets s
  where s.deployment_id = p_deployment_id and s.status <> 'deleted'
  order by s.id
  for update;
  perform 1 from public.deployment_secrets b where b.deployment_id = p_deployment_id order by b.env_var for update;

  with gone as (
    delete from public.deployment_secrets b where b.deployment_id = p_deployment_id
    returning b.env_var, b.secret_id
  )
  select pg_catalog.array_agg(g.env_var order by g.env_var), pg_catalog.array_agg(g.secret_id order by g.env_var)
  into v_env_vars, v_unbound
  from gone g;

  delete from vault.secrets vs
  where vs.id in (
    select v.vault_secret_id from public.secret_versions v
    join public.secrets s on s.id = v.secret_id
    where s.deployment_id = p_deployment_id and s.status <> 'deleted');
  update public.secret_versions v set retired_at = now()
  from public.secrets s
  where s.id = v.secret_id and s.deployment_id = p_deployment_id and s.status <> 'deleted' and v.retired_at is null;
  with marked as (
    update public.secrets s set status = 'deleted', deleted_at = now(), updated_at = now()
    where s.deployment_id = p_deployment_id and s.status <> 'deleted'
    returning s.id, s.current_version, s.created_at
  )
  select pg_catalog.array_agg(m.id order by m.created_at, m.id),
         pg_catalog.array_agg(m.current_version order by m.created_at, m.id)
  into v_deleted, v_versions
  from marked m;

  -- audit rows last: the unbinds (by env_var), then each deleted secret (by creation), as before
  for i in 1 .. coalesce(pg_catalog.cardinality(v_env_vars), 0) loop
    perform public.secret_access_log__append('unbind', 'success', v_deployment.org_id, p_deployment_id,
      v_unbound[i], null, 'env_var ' || v_env_vars[i], p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  for i in 1 .. coalesce(pg_catalog.cardinality(v_deleted), 0) loop
    perform public.secret_access_log__append('delete', 'success', v_deployment.org_id, p_deployment_id, v_deleted[i],
      v_versions[i], 'deployment secrets deleted', p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('deleted', coalesce(pg_catalog.cardinality(v_deleted), 0));
end
$$;

-- Records the intent to read the secrets bound to a deployment (all of them, or the given ids).
-- Call it in a transaction of its own, and pass the returned intent_id to deployment_secrets__read
-- within 60 seconds. It checks no entitlement (the read does) and returns no value.
create function public.deployment_secrets__intend_read(
  p_deployment_id uuid,
  p_secret_ids uuid[] default null,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.secret_read_intents%rowtype;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_secret_ids is not null and pg_catalog.array_position(p_secret_ids, null) is not null then
    raise exception using errcode = '22023', message = 'secret_ids: must not contain null';
  end if;
  if p_secret_ids is not null and pg_catalog.cardinality(p_secret_ids) not between 1 and 100 then
    raise exception using errcode = '22023', message = 'secret_ids: must hold 1 to 100 ids (or be omitted: every bound secret)';
  end if;
  insert into public.secret_read_intents
    (org_id, deployment_id, secret_ids, actor, job_id, request_ip, user_agent, xact)
  values
    ((select d.org_id from public.deployments d where d.id = p_deployment_id), p_deployment_id,
     (select pg_catalog.array_agg(distinct x.id order by x.id) from pg_catalog.unnest(p_secret_ids) as x(id)),
     p_actor, p_job_id, p_request_ip, p_user_agent, pg_catalog.pg_current_xact_id())
  returning * into v_row;
  return pg_catalog.jsonb_build_object(
    'intent_id', v_row.id, 'expires_at', v_row.at + interval '60 seconds');
end
$$;

revoke all on function public.secrets__create(uuid, text, text, text, text, uuid, text, text, inet, text)
  from public, anon, authenticated, service_role;
revoke all on function public.secrets__add_version(uuid, text, text, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.secret_versions__retire(uuid, integer, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.secrets__revoke(uuid, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.deployment_secrets__bind(uuid, text, uuid, text, text, inet, text)
  from public, anon, authenticated, service_role;
revoke all on function public.deployment_secrets__unbind(uuid, text, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid) from public, anon, authenticated, service_role;
revoke all on function public.secrets__delete_for_deployment(uuid, text, text, inet, text) from public, anon, authenticated, service_role;
grant execute on function public.secrets__create(uuid, text, text, text, text, uuid, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.secrets__add_version(uuid, text, text, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.secret_versions__retire(uuid, integer, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.secrets__revoke(uuid, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.deployment_secrets__bind(uuid, text, uuid, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.deployment_secrets__unbind(uuid, text, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid) to cortex_orchestrator;
grant execute on function public.secrets__delete_for_deployment(uuid, text, text, inet, text) to cortex_orchestrator;
revoke all on function public.deployment_secrets__intend_read(uuid, uuid[], text, text, inet, text)
  from public, anon, authenticated, service_role;
grant execute on function public.deployment_secrets__intend_read(uuid, uuid[], text, text, inet, text) to cortex_orchestrator;

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

-- Read intents: members see their organizations' intents; only retention removes them.

alter table public.secret_read_intents enable row level security;
create policy secret_read_intents_select_member on public.secret_read_intents
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));
revoke all on table public.secret_read_intents from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.secret_read_intents to authenticated, service_role;
grant select, delete on table public.secret_read_intents to cortex_audit_retention;
create policy secret_read_intents_retention on public.secret_read_intents
  for all to cortex_audit_retention using (true) with check (true);
