-- Hosted supabase_vault 0.3's create_secret INSERTs the plaintext and then UPDATEs it to its
-- ciphertext: the value stays in a dead tuple (until vacuum) and in the WAL. The stand-in now does
-- the same, so this test sees it in the table's pages; the contract's writers store a random
-- placeholder with create_secret and the value with update_secret, and no row version, live or
-- dead, ever holds the value.
begin;
create extension if not exists pgtap with schema extensions;
create extension if not exists pageinspect with schema extensions;
set local search_path = extensions, public;
select plan(6);

-- every tuple version on every page of vault.secrets, live or dead, as raw bytes
create function pg_temp.in_pages(p_value text) returns bigint language sql as $$
  select count(*) from generate_series(0, (pg_relation_size('vault.secrets') / current_setting('block_size')::int)::int - 1) b,
    heap_page_items(get_raw_page('vault.secrets', b)) i
  where i.t_data is not null and position(convert_to(p_value, 'UTF8') in i.t_data) > 0
$$;

select 'sk-wal-canary-' || encode(gen_random_bytes(16), 'hex') as direct \gset
select 'sk-wal-canary-' || encode(gen_random_bytes(16), 'hex') as customer \gset
select 'sk-wal-canary-' || encode(gen_random_bytes(16), 'hex') as rotated \gset
select 'sk-wal-canary-' || encode(gen_random_bytes(16), 'hex') as platform \gset
select 'sk-wal-canary-' || encode(gen_random_bytes(16), 'hex') as platform2 \gset

-- the stand-in behaves like the extension: create_secret leaves its argument in a row version
select vault.create_secret(:'direct', 'pgtap-wal-direct') as direct_id \gset
select ok(pg_temp.in_pages(:'direct') > 0, 'vault.create_secret leaves the plaintext in a (dead) row version, as 0.3 does');
select is((select decrypted_secret from vault.decrypted_secrets where id = :'direct_id'), :'direct'::text,
  'and the live row decrypts to it');

select public.organizations__create('WAL Org') ->> 'id' as org \gset
select public.secrets__create(:'org', 'k', 'other', :'customer', repeat('ab', 32)) ->> 'secret_id' as s \gset
select public.secrets__add_version(:'s', :'rotated', repeat('ab', 32)) is not null as ok \gset
select public.platform_secrets__create('pgtap-wal-key', :'platform', repeat('ab', 32)) is not null as ok \gset
select public.platform_secrets__rotate('pgtap-wal-key', :'platform2', repeat('ab', 32)) is not null as ok \gset
select is(pg_temp.in_pages(:'customer') + pg_temp.in_pages(:'rotated') + pg_temp.in_pages(:'platform')
          + pg_temp.in_pages(:'platform2'), 0::bigint,
  'secrets__create, __add_version, platform_secrets__create and __rotate leave no value in any row version');
select is((select decrypted_secret from vault.decrypted_secrets v join public.secret_versions sv on sv.vault_secret_id = v.id
           where sv.secret_id = :'s' and sv.version = 2), :'rotated'::text, 'the stored value decrypts (control)');
select is((select count(*) from vault.secrets v join public.secret_versions sv on sv.vault_secret_id = v.id
           where sv.secret_id = :'s' and v.name like 'org:%:secret:%:v_'), 2::bigint,
  'under the names of the scheme');
select ok(pg_temp.in_pages('cortex-placeholder:') > 0, 'what the rows held in clear was the placeholder');

select * from finish();
rollback;
