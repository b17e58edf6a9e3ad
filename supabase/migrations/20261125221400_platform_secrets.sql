-- Platform-scoped secrets: credentials of the platform itself, such as the orchestrator's SSH
-- private key, owned by no organization. Same model as customer secrets: metadata here, values in
-- the vault (named `platform:<name>:v<version>`), one audited function that reads a value, and
-- every read, denial and change in secret_access_log, in the same transaction. Their audit rows
-- carry no org and form a chain of their own, the platform chain
-- ffffffff-ffff-ffff-ffff-ffffffffffff (secret_access_log__verify takes it like an org id).
--
-- Values may span lines (an OpenSSH private key does): line feeds are allowed, every other control
-- character is refused, and a value holds at most 16384 characters.
--
-- The audit log and its platform chain are 20261125211600_secret_access_log.sql; read intents work
-- as for customer secrets (20261125211700_secrets.sql).

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Internal: platform events append through here (no org, no deployment, the platform chain).
create function public.platform_secrets__audit(
  p_operation text,
  p_outcome text,
  p_secret_id uuid,
  p_version integer,
  p_reason text,
  p_actor text,
  p_job_id text,
  p_request_ip inet,
  p_user_agent text
) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  -- id, seq and hashes are placeholders: the chain trigger sets them under the chain lock
  insert into public.secret_access_log
    (id, chain_id, secret_id, version, operation, outcome, reason, actor, job_id, request_ip, user_agent,
     seq, prev_hash, hash)
  overriding system value
  values
    (0, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid, p_secret_id, p_version, p_operation, p_outcome, p_reason,
     p_actor, p_job_id, p_request_ip, p_user_agent, 0, '', '')
  returning id into v_id;
  return v_id;
end
$$;

-- ---- tables -----------------------------------------------------------------------------------------

create table public.platform_secrets (
  id uuid primary key default gen_random_uuid(),
  name text not null unique check (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
  display_prefix text not null,
  fingerprint text not null check (fingerprint ~ '^[0-9a-f]{64}$'),
  current_version integer not null default 1 check (current_version >= 1),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table public.platform_secret_versions (
  secret_id uuid not null references public.platform_secrets (id),
  version integer not null check (version >= 1),
  -- a reference into vault.secrets; that row is deleted when the version is retired
  vault_secret_id uuid not null unique,
  display_prefix text not null,
  fingerprint text not null check (fingerprint ~ '^[0-9a-f]{64}$'),
  created_at timestamptz not null default now(),
  retired_at timestamptz,
  primary key (secret_id, version)
);

-- ---- internal helpers -------------------------------------------------------------------------------

create function public.platform_secrets__check_name(p_name text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_name is null or p_name !~ '^[a-z0-9][a-z0-9._-]{0,62}$' then
    raise exception using errcode = '22023', message =
      'name: must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters';
  end if;
end
$$;

-- Like input__check_text, but a value may span lines: U+000A is allowed, and only it.
create function public.platform_secrets__check_value(p_value text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is null or p_value = '' then
    raise exception using errcode = '22023', message = 'value: must not be empty';
  end if;
  if pg_catalog.char_length(p_value) > 16384 then
    raise exception using errcode = '22023', message = 'value: must be at most 16384 characters';
  end if;
  if p_value ~ '[\x01-\x09\x0b-\x1f\x7f]' then
    raise exception using errcode = '22023', message =
      'value: must not contain control characters other than line feeds (U+0000-U+0009, U+000B-U+001F, U+007F)';
  end if;
  if pg_catalog.btrim(p_value, e' \n') = '' then
    raise exception using errcode = '22023', message = 'value: must not be blank';
  end if;
  if pg_catalog.char_length(p_value) < 20 then
    raise exception using errcode = '22023', message = 'value: must be at least 20 characters (no real key is shorter)';
  end if;
end
$$;

-- Display prefix of a value that may span lines: described on one line, without its final line
-- feeds. The fingerprint, given by the caller, is of the exact value (see secrets__describe_value:
-- its shape is checked, and the value's plain SHA-256 refused).
create function public.platform_secrets__describe_value(p_value text, p_fingerprint text, out display_prefix text, out fingerprint text)
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  select d.display_prefix into display_prefix
  from public.secrets__describe_value(pg_catalog.replace(pg_catalog.rtrim(p_value, e'\n'), e'\n', ' '), p_fingerprint) d;
  if p_fingerprint = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p_value, 'UTF8')), 'hex') then
    raise exception using errcode = '22023', message =
      'fingerprint: is the unkeyed SHA-256 of the value; give its HMAC-SHA256 under the fingerprint key';
  end if;
  fingerprint := p_fingerprint;
end
$$;

revoke all on function public.platform_secrets__audit(text, text, uuid, integer, text, text, text, inet, text)
  from public, anon, authenticated, service_role;
revoke all on function public.platform_secrets__check_name(text) from public, anon, authenticated, service_role;
revoke all on function public.platform_secrets__check_value(text) from public, anon, authenticated, service_role;
revoke all on function public.platform_secrets__describe_value(text, text) from public, anon, authenticated, service_role;

-- ---- functions (the contract) -------------------------------------------------------------------

create function public.platform_secrets__create(
  p_name text,
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
  v_secret_id uuid := gen_random_uuid();
  v_described record;
  v_vault_name text;
  v_vault_id uuid;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.platform_secrets__check_name(p_name);
  perform public.platform_secrets__check_value(p_value);
  if exists (select 1 from public.platform_secrets s where s.name = p_name) then
    raise exception using errcode = '23505',
      message = 'name: a platform secret with this name already exists; rotate it instead';
  end if;

  select * into v_described from public.platform_secrets__describe_value(p_value, p_fingerprint);
  v_vault_name := 'platform:' || p_name || ':v1';
  v_vault_id := public.vault__store(p_value, v_vault_name, pg_catalog.format('cortex platform secret %s version 1', p_name));
  insert into public.platform_secrets (id, name, display_prefix, fingerprint)
  values (v_secret_id, p_name, v_described.display_prefix, v_described.fingerprint);
  insert into public.platform_secret_versions (secret_id, version, vault_secret_id, display_prefix, fingerprint)
  values (v_secret_id, 1, v_vault_id, v_described.display_prefix, v_described.fingerprint);

  perform public.platform_secrets__audit('create', 'success', v_secret_id, 1, 'platform secret ' || p_name,
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object(
    'secret_id', v_secret_id,
    'name', p_name,
    'version', 1,
    'display_prefix', v_described.display_prefix,
    'fingerprint', v_described.fingerprint,
    'vault_name', v_vault_name);
end
$$;

-- A new value becomes the next version, and the older versions are retired (their vault secrets
-- deleted) in the same transaction: the platform reads only the current version, and a credential
-- kept after it stopped being used is a liability. Roll a key out (install the new public key)
-- before rotating. The retirement comes before the audit rows (the rotation, then each retired
-- version): chain head last.
create function public.platform_secrets__rotate(
  p_name text,
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
  v_secret public.platform_secrets%rowtype;
  v_version integer;
  v_described record;
  v_vault_name text;
  v_retired integer[];
  v_retired_vault_ids uuid[];
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.platform_secrets__check_name(p_name);
  perform public.platform_secrets__check_value(p_value);
  select * into v_secret from public.platform_secrets s where s.name = p_name for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('platform secret %s not found', p_name);
  end if;

  select coalesce(max(v.version), 0) + 1 into v_version from public.platform_secret_versions v where v.secret_id = v_secret.id;
  select * into v_described from public.platform_secrets__describe_value(p_value, p_fingerprint);
  v_vault_name := 'platform:' || p_name || ':v' || v_version::text;
  insert into public.platform_secret_versions (secret_id, version, vault_secret_id, display_prefix, fingerprint)
  values (v_secret.id, v_version,
    public.vault__store(p_value, v_vault_name, pg_catalog.format('cortex platform secret %s version %s', p_name, v_version)),
    v_described.display_prefix, v_described.fingerprint);
  update public.platform_secrets s
  set current_version = v_version, display_prefix = v_described.display_prefix,
      fingerprint = v_described.fingerprint, updated_at = now()
  where s.id = v_secret.id;
  with retired as (
    update public.platform_secret_versions v set retired_at = now()
    where v.secret_id = v_secret.id and v.version < v_version and v.retired_at is null
    returning v.version, v.vault_secret_id
  )
  select pg_catalog.array_agg(r.version order by r.version), pg_catalog.array_agg(r.vault_secret_id order by r.version)
  into v_retired, v_retired_vault_ids
  from retired r;
  delete from vault.secrets vs where vs.id = any (v_retired_vault_ids);

  -- audit rows last: the chain head is the last lock taken
  perform public.platform_secrets__audit('rotate', 'success', v_secret.id, v_version,
    pg_catalog.format('platform secret %s: version %s replaces version %s', p_name, v_version, v_secret.current_version),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  for i in 1 .. coalesce(pg_catalog.cardinality(v_retired), 0) loop
    perform public.platform_secrets__audit('delete', 'success', v_secret.id, v_retired[i],
      pg_catalog.format('platform secret %s: version %s retired by rotation', p_name, v_retired[i]),
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object(
    'secret_id', v_secret.id,
    'name', p_name,
    'version', v_version,
    'display_prefix', v_described.display_prefix,
    'fingerprint', v_described.fingerprint,
    'vault_name', v_vault_name);
end
$$;

-- THE one place a platform secret value is read. An unknown name returns {"status":"denied"}
-- instead of raising, so that its audit row commits with the caller's transaction; a vault row
-- that is missing or does not decrypt returns {"status":"error"}, audited too. Neither holds a
-- value. A success writes one `read` row in the same transaction as the read.
create function public.platform_secrets__read(
  p_name text,
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
  v_secret_id uuid;
  v_version integer;
  v_vault_id uuid;
  v_value text;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.platform_secrets__check_name(p_name);

  -- FOR SHARE: a rotation either waits for this read to commit or is seen by it
  select s.id, s.current_version, v.vault_secret_id into v_secret_id, v_version, v_vault_id
  from public.platform_secrets s
  join public.platform_secret_versions v on v.secret_id = s.id and v.version = s.current_version
  where s.name = p_name
  for share of s;
  if not found then
    perform public.platform_secrets__audit('read', 'denied', null, null,
      pg_catalog.format('platform secret %s not found', p_name), p_actor, p_job_id, p_request_ip, p_user_agent);
    return pg_catalog.jsonb_build_object(
      'status', 'denied', 'reason', pg_catalog.format('platform secret %s not found', p_name));
  end if;

  -- a value only against a committed intent (read intents, in 20261125211700_secrets.sql)
  if not public.secret_read_intents__valid(p_intent_id, null, null, p_name) then
    perform public.platform_secrets__audit('read', 'denied', v_secret_id, v_version,
      pg_catalog.format('platform secret %s: no committed read intent', p_name), p_actor, p_job_id, p_request_ip, p_user_agent);
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason', pg_catalog.format(
      'platform secret %s: read intent missing, expired, for another read, or not committed: call platform_secrets__intend_read in a transaction of its own first',
      p_name));
  end if;

  begin
    -- the vault row must carry this version's name: a reference pointing elsewhere reads as missing
    select ds.decrypted_secret into v_value from vault.decrypted_secrets ds
    where ds.id = v_vault_id and ds.name = 'platform:' || p_name || ':v' || v_version::text;
  exception when others then
    -- a vault row that fails to decrypt is reported, never echoed
    v_value := null;
  end;
  if v_value is null then
    perform public.platform_secrets__audit('read', 'error', v_secret_id, v_version,
      pg_catalog.format('platform secret %s: vault secret missing or unreadable', p_name),
      p_actor, p_job_id, p_request_ip, p_user_agent);
    return pg_catalog.jsonb_build_object('status', 'error', 'reason', pg_catalog.format(
      'platform secret %s version %s: vault secret missing or unreadable', p_name, v_version));
  end if;

  -- audit row last: the chain lock is held only from here to commit
  perform public.platform_secrets__audit('read', 'success', v_secret_id, v_version,
    'platform secret ' || p_name || '; intent ' || p_intent_id::text, p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object('status', 'ok', 'value', v_value, 'version', v_version);
end
$$;

-- The read intent for a platform secret, by name (see deployment_secrets__intend_read).
create function public.platform_secrets__intend_read(
  p_name text,
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
  if p_name is null or p_name !~ '^[a-z0-9][a-z0-9._-]{0,62}$' then
    raise exception using errcode = '22023', message =
      'name: must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters';
  end if;
  insert into public.secret_read_intents (platform_name, actor, job_id, request_ip, user_agent, xact)
  values (p_name, p_actor, p_job_id, p_request_ip, p_user_agent, pg_catalog.pg_current_xact_id())
  returning * into v_row;
  return pg_catalog.jsonb_build_object(
    'intent_id', v_row.id, 'expires_at', v_row.at + interval '60 seconds');
end
$$;

revoke all on function public.platform_secrets__create(text, text, text, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.platform_secrets__rotate(text, text, text, text, text, inet, text) from public, anon, authenticated, service_role;
revoke all on function public.platform_secrets__read(text, text, text, inet, text, uuid) from public, anon, authenticated, service_role;
grant execute on function public.platform_secrets__create(text, text, text, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.platform_secrets__rotate(text, text, text, text, text, inet, text) to cortex_orchestrator;
grant execute on function public.platform_secrets__read(text, text, text, inet, text, uuid) to cortex_orchestrator;
revoke all on function public.platform_secrets__intend_read(text, text, text, inet, text)
  from public, anon, authenticated, service_role;
grant execute on function public.platform_secrets__intend_read(text, text, text, inet, text) to cortex_orchestrator;

-- ---- privileges and row-level security --------------------------------------------------------------

-- No organization owns these rows, so no member sees them: RLS is on with no policy for
-- `authenticated`. service_role may read the metadata (never a value); changes go through the
-- functions above, which audit them.
alter table public.platform_secrets enable row level security;
alter table public.platform_secret_versions enable row level security;
revoke all on table public.platform_secrets, public.platform_secret_versions
  from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.platform_secrets, public.platform_secret_versions to service_role;
