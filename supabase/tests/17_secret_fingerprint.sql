-- The fingerprint members see is computed by the orchestrator, under a key kept outside the
-- database (FINGERPRINT_KEY_FILE): the functions store the fingerprint they are given after checking
-- its shape, and nothing in the database can compute one any more (no key in the vault, no function
-- that hashes a value with a key).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(14);

select 'sk-ant-api03-fp-' || encode(extensions.gen_random_bytes(16), 'hex') as v \gset
select encode(extensions.hmac(convert_to(:'v', 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex') as fp \gset
select public.organizations__create('Fingerprint Org') ->> 'id' as org \gset

-- ---- nothing in the database can compute a fingerprint ---------------------------------------------
select is((select count(*) from vault.secrets where name like 'cortex:fingerprint-key%'), 0::bigint,
  'the vault holds no fingerprint key');
select is(to_regprocedure('public.secrets__fingerprint(text)'), null, 'secrets__fingerprint(text) is gone');
select is(to_regprocedure('public.secrets__fingerprint_key()'), null, 'secrets__fingerprint_key() is gone');
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.prosrc ~* '\m(hmac|digest)\s*\('),
  null, 'no function in public calls hmac() or digest() (the vault stand-in''s cipher does, with its own root key)');

-- ---- a malformed fingerprint is refused, before anything is stored ------------------------------------
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, %L)', :'org', 'bad-fp', 'other', :'v', f),
  '22023', 'fingerprint: must be the HMAC-SHA256 of the value under the orchestrator''s fingerprint key, as 64 lowercase hex digits',
  'secrets__create refuses the fingerprint ' || coalesce(d, 'null'))
from (values (repeat('a', 63), '63 hex digits'), (repeat('a', 65), '65 hex digits'), (upper(:'fp'), 'upper-case hex'),
             (repeat('g', 64), 'a non-hex digit')) t(f, d);
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, null)', :'org', 'bad-fp', 'other', :'v'),
  '22023', 'fingerprint: must be the HMAC-SHA256 of the value under the orchestrator''s fingerprint key, as 64 lowercase hex digits',
  'secrets__create refuses a null fingerprint');
select is((select count(*) from public.secrets where org_id = :'org'), 0::bigint, 'none of those stored anything');

-- ---- a well-formed one is stored as given -------------------------------------------------------------
select public.secrets__create(:'org', 'good', 'other', :'v', :'fp') as created \gset
select is((:'created'::jsonb) ->> 'fingerprint', :'fp', 'secrets__create returns the fingerprint it was given');
select is((select s.fingerprint || '|' || v.fingerprint from public.secrets s join public.secret_versions v on v.secret_id = s.id
           where s.id = ((:'created'::jsonb) ->> 'secret_id')::uuid), :'fp' || '|' || :'fp',
  'and stores it on the secret and its version');
select throws_ok(format('select public.secrets__add_version(%L, %L, %L)', (:'created'::jsonb) ->> 'secret_id', :'v' || '-2', 'not-a-fingerprint'),
  '22023', 'fingerprint: must be the HMAC-SHA256 of the value under the orchestrator''s fingerprint key, as 64 lowercase hex digits',
  'secrets__add_version checks it too');
select throws_ok(format('select public.platform_secrets__create(%L, %L, %L)', 'pgtap-fp-key', :'v',
    encode(sha256(convert_to(:'v', 'UTF8')), 'hex')),
  '22023', 'fingerprint: is the unkeyed SHA-256 of the value; give its HMAC-SHA256 under the fingerprint key',
  'platform_secrets__create refuses the value''s plain SHA-256');

select * from finish();
rollback;
