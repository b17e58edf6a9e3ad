-- The local vault stand-in (supabase/local/02_vault.sql) behaves like supabase_vault 0.3:
-- same shape and grants, values encrypted at rest under a key that is never in the database,
-- ciphertext bound to its row.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(49);

-- ---- shape ----------------------------------------------------------------------------------------
select has_table('vault', 'secrets', 'vault.secrets exists');
select columns_are('vault', 'secrets',
  array['id', 'name', 'description', 'secret', 'key_id', 'nonce', 'created_at', 'updated_at'],
  'vault.secrets has the columns of supabase_vault 0.3');
select has_view('vault', 'decrypted_secrets', 'vault.decrypted_secrets exists');
select columns_are('vault', 'decrypted_secrets',
  array['id', 'name', 'description', 'secret', 'decrypted_secret', 'key_id', 'nonce', 'created_at', 'updated_at'],
  'vault.decrypted_secrets has the columns of supabase_vault 0.3');
select function_returns('vault', 'create_secret', array['text', 'text', 'text', 'uuid'], 'uuid',
  'vault.create_secret(text, text, text, uuid) returns uuid');
select function_returns('vault', 'update_secret', array['uuid', 'text', 'text', 'text', 'uuid'], 'void',
  'vault.update_secret(uuid, text, text, text, uuid) returns void');

-- ---- round trip -----------------------------------------------------------------------------------
select vault.create_secret('canary-vault-value-0001', 'test:vault:one', 'first') as one \gset
select vault.create_secret('canary-vault-value-0001', 'test:vault:two') as two \gset

select is((select decrypted_secret from vault.decrypted_secrets where id = :'one'),
  'canary-vault-value-0001', 'create_secret then decrypted_secrets returns the value');
select is((select name || '|' || description from vault.secrets where id = :'one'),
  'test:vault:one|first', 'name and description are stored');
select is((select description from vault.secrets where id = :'two'), '', 'description defaults to the empty string');
select ok((select position('canary-vault-value-0001' in secret) = 0 from vault.secrets where id = :'one'),
  'the stored secret is not the plaintext');
select ok((select position(encode(convert_to('canary-vault-value-0001', 'utf8'), 'base64') in secret) = 0
           from vault.secrets where id = :'one'),
  'the stored secret is not the plaintext in base64 either');
select isnt((select secret from vault.secrets where id = :'one'), (select secret from vault.secrets where id = :'two'),
  'the same value encrypts differently in two rows');

select secret as one_ct_before, encode(nonce, 'hex') as one_nonce_before from vault.secrets where id = :'one' \gset
select vault.update_secret(:'one', 'canary-vault-value-0002');
select is((select decrypted_secret from vault.decrypted_secrets where id = :'one'),
  'canary-vault-value-0002', 'update_secret replaces the value');
select isnt((select secret from vault.secrets where id = :'one'), :'one_ct_before',
  'the row holds a new ciphertext: the old value is not kept beside the new one');
select is((select encode(nonce, 'hex') from vault.secrets where id = :'one'), :'one_nonce_before',
  'and keeps its nonce, as supabase_vault 0.3''s update_secret does (the nonce reuse docs/data-contract.md states)');
select is((select name || '|' || description from vault.secrets where id = :'one'),
  'test:vault:one|first', 'update_secret with null name and description keeps them');
select vault.update_secret(:'one', null, 'test:vault:renamed', 'renamed');
select is((select name || '|' || description || '|' || decrypted_secret from vault.decrypted_secrets where id = :'one'),
  'test:vault:renamed|renamed|canary-vault-value-0002', 'update_secret with a null value keeps the value');
select throws_ok($$select vault.create_secret('x', 'test:vault:two')$$, '23505', null,
  'vault secret names are unique');

-- ---- ciphertext bound to its row ----------------------------------------------------------------
-- an attacker with superuser rights writing the table directly (trigger bypassed)
savepoint tamper;
set local session_replication_role = replica;
update vault.secrets s set secret = o.secret, nonce = o.nonce
from vault.secrets o
where s.id = :'two' and o.id = :'one';
set local session_replication_role = origin;
select throws_ok(format('select decrypted_secret from vault.decrypted_secrets where id = %L', :'two'),
  'XX001', format('vault: secret %s failed authentication (changed, copied from another row, or encrypted under another key)', :'two'),
  'a ciphertext copied from another row does not decrypt');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
update vault.secrets set secret = encode(set_byte(decode(secret, 'base64'), 3,
  get_byte(decode(secret, 'base64'), 3) # 1), 'base64') where id = :'two';
set local session_replication_role = origin;
select throws_ok(format('select decrypted_secret from vault.decrypted_secrets where id = %L', :'two'),
  'XX001', null, 'a ciphertext with one bit flipped does not decrypt');
rollback to savepoint tamper;

select throws_ok($$insert into vault.secrets (secret, nonce) values ('plaintext', '\x00')$$,
  '42501', 'vault.secrets: write secrets with vault.create_secret or vault.update_secret',
  'a plain insert is refused even for a superuser');
select throws_ok(format('update vault.secrets set secret = (select secret from vault.secrets where id = %L) where id = %L',
  :'one', :'two'),
  '42501', 'vault.secrets: write secrets with vault.create_secret or vault.update_secret',
  'copying a ciphertext into another row is refused');

-- ---- the root key ---------------------------------------------------------------------------------
create temp table key_material as
select k as root_hex, encode(decode(k, 'hex'), 'base64') as root_b64
from (select btrim(pg_read_file(current_setting('cortex.vault_root_key_file')), e' \t\r\n') as k) f;
select is((select length(root_hex) from key_material), 64, 'the test reads the 64-hex-character root key file');

create function pg_temp.tables_holding(p_needle text) returns bigint language plpgsql as $$
declare
  t record;
  n bigint;
  total bigint := 0;
begin
  for t in
    select c.oid::regclass as rel from pg_class c join pg_namespace ns on ns.oid = c.relnamespace
    where c.relkind in ('r', 'p', 'm')
      and ns.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
      and ns.nspname not like 'pg_temp%' and ns.nspname not like 'pg_toast_temp%'
  loop
    execute format('select count(*) from %s x where position(lower($1) in lower(x::text)) > 0', t.rel)
      into n using p_needle;
    total := total + n;
  end loop;
  return total;
end
$$;
select is(pg_temp.tables_holding((select root_hex from key_material)), 0::bigint,
  'no table in any schema holds the root key (hex)');
select is(pg_temp.tables_holding((select root_b64 from key_material)), 0::bigint,
  'no table in any schema holds the root key (base64)');
select is((select count(*) from pg_proc, key_material
           where position(lower(root_hex) in lower(prosrc || coalesce(array_to_string(proconfig, ' '), ''))) > 0),
  0::bigint, 'no function body or setting holds the root key');
select is((select count(*) from pg_db_role_setting, key_material
           where position(lower(root_hex) in lower(array_to_string(setconfig, ' '))) > 0),
  0::bigint, 'no role or database setting holds the root key');

-- a session cannot point the vault at a key file of its choosing
set local cortex.vault_root_key_file = '/dev/null';
select is((select decrypted_secret from vault.decrypted_secrets where id = :'one'), 'canary-vault-value-0002',
  'the key file path is pinned: a session setting does not change it');
reset cortex.vault_root_key_file;

-- ---- grants ---------------------------------------------------------------------------------------
select ok(not has_schema_privilege('anon', 'vault', 'usage'), 'anon cannot use schema vault');
select ok(not has_schema_privilege('authenticated', 'vault', 'usage'), 'authenticated cannot use schema vault');
select ok(has_schema_privilege('service_role', 'vault', 'usage'), 'service_role uses schema vault');
select table_privs_are('vault', 'secrets', 'service_role', array['DELETE', 'SELECT'],
  'service_role may select and delete vault.secrets, not insert or update (as on Supabase)');
select table_privs_are('vault', 'decrypted_secrets', 'service_role', array['DELETE', 'SELECT'],
  'service_role may select and delete vault.decrypted_secrets');
select ok(not has_function_privilege('public', 'vault.create_secret(text, text, text, uuid)', 'execute'),
  'PUBLIC cannot execute vault.create_secret');
select ok(not has_function_privilege('public', 'vault._root_key()', 'execute')
          and not has_function_privilege('service_role', 'vault._root_key()', 'execute'),
  'nobody but the owner can execute vault._root_key');

set local role anon;
select throws_ok($$select decrypted_secret from vault.decrypted_secrets$$, '42501', null,
  'anon cannot read vault.decrypted_secrets');
select throws_ok($$select vault.create_secret('x')$$, '42501', null, 'anon cannot call vault.create_secret');
reset role;

set local role authenticated;
select throws_ok($$select decrypted_secret from vault.decrypted_secrets$$, '42501', null,
  'authenticated cannot read vault.decrypted_secrets');
select throws_ok($$select secret from vault.secrets$$, '42501', null, 'authenticated cannot read vault.secrets');
select throws_ok($$select vault.create_secret('x')$$, '42501', null, 'authenticated cannot call vault.create_secret');
select throws_ok($$select vault.update_secret(gen_random_uuid(), 'x')$$, '42501', null,
  'authenticated cannot call vault.update_secret');
reset role;

set local role service_role;
select vault.create_secret('canary-vault-value-0003', 'test:vault:three') as three \gset
select is((select decrypted_secret from vault.decrypted_secrets where id = :'three'), 'canary-vault-value-0003',
  'service_role creates and reads a secret');
select lives_ok(format('select vault.update_secret(%L, %L)', :'three', 'canary-vault-value-0004'),
  'service_role updates a secret');
select is((select name || '|' || decrypted_secret from vault.decrypted_secrets where id = :'three'),
  'test:vault:three|canary-vault-value-0004', 'and reads the new value back, under the same name');
select throws_ok($$insert into vault.secrets (secret) values ('x')$$, '42501', null,
  'service_role cannot insert into vault.secrets directly');
select throws_ok(format('update vault.secrets set name = %L where id = %L', 'x', :'three'), '42501', null,
  'service_role cannot update vault.secrets directly');
select throws_ok($$select vault._root_key()$$, '42501', null, 'service_role cannot call vault._root_key');
select lives_ok(format('delete from vault.secrets where id = %L', :'three'), 'service_role deletes a secret');
reset role;
select is((select count(*) from vault.secrets where id = :'three'), 0::bigint, 'the deleted secret is gone');

select * from finish();
rollback;
