-- Local mode only: a stand-in for Supabase's `supabase_vault` 0.3 on a plain Postgres, which has
-- neither supabase_vault nor pgsodium. Same schema, table, view, function signatures and grants as
-- a hosted project, so the migrations run unchanged against either.
--
-- Encryption: AES-256-CBC with a random 16-byte nonce (the `nonce` column), then HMAC-SHA256 over
-- (row id, nonce, ciphertext); `secret` holds base64(ciphertext || tag). Tying the tag to the row id
-- plays the role of supabase_vault's associated data: a ciphertext copied into another row no
-- longer authenticates. Both keys are derived from a root key that lives in a file outside the
-- database (services-up.sh writes it, owner postgres, mode 0400) and is read at run time only;
-- nothing derived from it is ever stored.
--
-- Idempotent: it runs on every services:up.
set client_min_messages = warning;

do $$
begin
  if coalesce(current_setting('cortex.vault_root_key_file', true), '') = '' then
    raise exception 'cortex.vault_root_key_file is not set: start PostgreSQL with -c cortex.vault_root_key_file=<file holding 64 hex characters> (scripts/services-up.sh does)';
  end if;
end
$$;

create schema if not exists vault;

create table if not exists vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text,
  description text not null default '',
  secret text not null,
  key_id uuid,
  nonce bytea,
  created_at timestamptz not null default current_timestamp,
  updated_at timestamptz not null default current_timestamp
);
comment on table vault.secrets is 'Table with encrypted `secret` column for storing sensitive information on disk.';
create unique index if not exists secrets_name_idx on vault.secrets using btree (name) where name is not null;

-- The path is pinned at install time (SET ... FROM CURRENT): a custom setting can be changed by
-- any session, and a caller must not be able to point this function at a key of its choosing.
create or replace function vault._root_key() returns bytea
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
set cortex.vault_root_key_file from current
as $$
declare
  v_hex text;
begin
  v_hex := pg_catalog.btrim(
    pg_catalog.pg_read_file(pg_catalog.current_setting('cortex.vault_root_key_file')), e' \t\r\n');
  if v_hex !~ '^[0-9a-fA-F]{64}$' then
    raise exception using errcode = 'XX000',
      message = 'vault root key file must hold exactly 64 hexadecimal characters';
  end if;
  return pg_catalog.decode(v_hex, 'hex');
end
$$;

create or replace function vault._mac(p_root bytea, p_id uuid, p_nonce bytea, p_ciphertext bytea)
returns bytea
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select extensions.hmac(
    'cortex-vault/v1'::bytea || pg_catalog.uuid_send(p_id) || p_nonce || p_ciphertext,
    extensions.hmac('cortex-vault/mac/v1'::bytea, p_root, 'sha256'),
    'sha256')
$$;

create or replace function vault._encrypt_secret(p_id uuid, p_plaintext text, p_nonce bytea)
returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_root bytea;
  v_ciphertext bytea;
begin
  if p_plaintext is null then
    return null;
  end if;
  v_root := vault._root_key();
  v_ciphertext := extensions.encrypt_iv(
    pg_catalog.convert_to(p_plaintext, 'utf8'),
    extensions.hmac('cortex-vault/enc/v1'::bytea, v_root, 'sha256'),
    p_nonce,
    'aes-cbc/pad:pkcs');
  return pg_catalog.encode(v_ciphertext || vault._mac(v_root, p_id, p_nonce, v_ciphertext), 'base64');
end
$$;

create or replace function vault._decrypt_secret(p_id uuid, p_secret text, p_nonce bytea)
returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_root bytea;
  v_raw bytea;
  v_ciphertext bytea;
begin
  if p_secret is null then
    return null;
  end if;
  begin
    v_raw := pg_catalog.decode(p_secret, 'base64');
  exception when others then
    -- decode's own message quotes the offending character: keep stored text out of errors
    v_raw := null;
  end;
  if v_raw is null or p_nonce is null or pg_catalog.length(p_nonce) <> 16
     or pg_catalog.length(v_raw) < 48 then
    raise exception using errcode = 'XX001',
      message = pg_catalog.format('vault: secret %s is not a ciphertext written by vault.create_secret', p_id);
  end if;
  v_ciphertext := pg_catalog.substr(v_raw, 1, pg_catalog.length(v_raw) - 32);
  v_root := vault._root_key();
  if vault._mac(v_root, p_id, p_nonce, v_ciphertext)
     <> pg_catalog.substr(v_raw, pg_catalog.length(v_raw) - 31) then
    raise exception using errcode = 'XX001',
      message = pg_catalog.format('vault: secret %s failed authentication (changed, copied from another row, or encrypted under another key)', p_id);
  end if;
  return pg_catalog.convert_from(
    extensions.decrypt_iv(
      v_ciphertext,
      extensions.hmac('cortex-vault/enc/v1'::bytea, v_root, 'sha256'),
      p_nonce,
      'aes-cbc/pad:pkcs'),
    'utf8');
end
$$;

-- Refuse rows not written by create_secret/update_secret, even from a superuser (on Supabase a
-- plain insert fails too); a superuser can still bypass triggers, and then reading fails instead.
-- The one plaintext row let through is create_secret's own first version (see create_secret).
create or replace function vault._secrets_check_ciphertext() returns trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'INSERT' and new.id::text = pg_catalog.current_setting('vault.stand_in_inserting', true) then
    return new;
  end if;
  begin
    perform vault._decrypt_secret(new.id, new.secret, new.nonce);
  exception when sqlstate 'XX001' then
    raise exception using errcode = '42501',
      message = 'vault.secrets: write secrets with vault.create_secret or vault.update_secret';
  end;
  return new;
end
$$;

create or replace trigger secrets_check_ciphertext
  before insert or update of id, secret, nonce on vault.secrets
  for each row execute function vault._secrets_check_ciphertext();

create or replace view vault.decrypted_secrets as
select
  s.id,
  s.name,
  s.description,
  s.secret,
  vault._decrypt_secret(s.id, s.secret, s.nonce) as decrypted_secret,
  s.key_id,
  s.nonce,
  s.created_at,
  s.updated_at
from vault.secrets s;

-- As supabase_vault 0.3 does: INSERT the plaintext, then UPDATE it to its ciphertext. The first
-- row version holds the value in clear (a dead tuple until vacuum, and in the WAL); the stand-in
-- used to encrypt first and so hid what a hosted project does. Callers that must not leave a
-- value in a row store a random placeholder here and the value with update_secret
-- (public.vault__store).
create or replace function vault.create_secret(
  new_secret text,
  new_name text default null,
  new_description text default '',
  -- unused, as in supabase_vault 0.3
  new_key_id uuid default null
) returns uuid
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id uuid := gen_random_uuid();
  v_nonce bytea := extensions.gen_random_bytes(16);
begin
  perform pg_catalog.set_config('vault.stand_in_inserting', v_id::text, true);
  insert into vault.secrets (id, secret, name, description, nonce)
  values (v_id, new_secret, new_name, new_description, v_nonce);
  perform pg_catalog.set_config('vault.stand_in_inserting', '', true);
  update vault.secrets s set secret = vault._encrypt_secret(v_id, new_secret, v_nonce) where s.id = v_id;
  return v_id;
end
$$;

create or replace function vault.update_secret(
  secret_id uuid,
  new_secret text default null,
  new_name text default null,
  new_description text default null,
  -- unused, as in supabase_vault 0.3
  new_key_id uuid default null
) returns void
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- as supabase_vault 0.3: the row's nonce is kept (its cipher is SIV, which tolerates that)
  update vault.secrets s
  set
    secret = case when new_secret is null then s.secret
                  else vault._encrypt_secret(s.id, new_secret, s.nonce) end,
    name = coalesce(new_name, s.name),
    description = coalesce(new_description, s.description),
    updated_at = now()
  where s.id = update_secret.secret_id;
end
$$;

-- Grants as on a hosted project: postgres and service_role use the vault; anon and authenticated
-- get nothing. No insert or update on the table: secrets go in through create_secret only.
revoke all on schema vault from public, anon, authenticated;
grant usage on schema vault to postgres, service_role;
revoke all on table vault.secrets, vault.decrypted_secrets from public, anon, authenticated, service_role;
grant select, delete on table vault.secrets, vault.decrypted_secrets to service_role;
revoke all on all functions in schema vault from public, anon, authenticated, service_role;
grant execute on function
  vault.create_secret(text, text, text, uuid),
  vault.update_secret(uuid, text, text, text, uuid),
  -- the view calls it with the reader's rights (supabase grants its decrypt function likewise)
  vault._decrypt_secret(uuid, text, bytea)
  to service_role;
