-- Platform-scoped secrets (DESIGN: the orchestrator's SSH private key may live in the vault, a
-- platform-scoped secret, audited): no org; the value in the vault under `platform:<name>:v<n>`;
-- read only through platform_secrets__read, by cortex_orchestrator; every read, denial and change audited
-- in the platform chain, which verifies like an org's; values may span lines, nothing else.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
-- pgTAP lives in `extensions`; the orchestrator's role needs it only to run the assertions here
grant usage on schema extensions to cortex_orchestrator;
select plan(62);
\ir support/read_intent.psql
-- the keyed fingerprint, as the orchestrator computes it (HMAC-SHA256 under a key outside the
-- database; here a test key): the functions store what they are given
create function pg_temp.fp(p_value text) returns text language sql as $f$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$f$;

-- shaped like an OpenSSH private key (several lines and a final line feed), random on every run
select E'-----BEGIN OPENSSH PRIVATE KEY-----\n' || encode(extensions.gen_random_bytes(51), 'base64') || E'\n'
  || encode(extensions.gen_random_bytes(51), 'base64') || E'\n-----END OPENSSH PRIVATE KEY-----\n' as key1 \gset
select E'-----BEGIN OPENSSH PRIVATE KEY-----\n' || encode(extensions.gen_random_bytes(51), 'base64')
  || E'\n-----END OPENSSH PRIVATE KEY-----\n' as key2 \gset
select 'ffffffff-ffff-ffff-ffff-ffffffffffff' as platform \gset

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
create function pg_temp.new_log(p_operation text, p_outcome text)
returns setof public.secret_access_log language sql as $$
  select * from public.secret_access_log l
  where l.id > (select id from log_mark) and l.operation = p_operation and l.outcome = p_outcome order by l.id
$$;
create function pg_temp.mark() returns boolean language sql as $$
  update log_mark set id = (select coalesce(max(id), 0) from public.secret_access_log) returning true
$$;

-- ---- create ----------------------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.platform_secrets__create('pgtap-ssh-key', :'key1', pg_temp.fp(:'key1'), 'ops:alice', 'job-p1', '192.0.2.20', 'pgtap')
  as created \gset
reset role;
select (:'created'::jsonb) ->> 'secret_id' as ps \gset
select is((:'created'::jsonb) - 'secret_id' - 'display_prefix',
  jsonb_build_object('name', 'pgtap-ssh-key', 'version', 1,
    'fingerprint', pg_temp.fp(:'key1'), 'vault_name', 'platform:pgtap-ssh-key:v1'),
  'cortex_orchestrator creates a platform secret: version 1, the keyed fingerprint of the exact value, vault name platform:<name>:v1');
select ok(position(E'\n' in (:'created'::jsonb) ->> 'display_prefix') = 0
          and position('canary' in (:'created'::jsonb) ->> 'display_prefix') = 0,
  'the display prefix of a multi-line value is one line and shows none of its body');
select is((select decrypted_secret from vault.decrypted_secrets where name = 'platform:pgtap-ssh-key:v1'), :'key1',
  'the vault holds the value byte for byte, line feeds included');
select is((select v.vault_secret_id from public.platform_secret_versions v where v.secret_id = :'ps' and v.version = 1),
  (select id from vault.secrets where name = 'platform:pgtap-ssh-key:v1'), 'platform_secret_versions references it');
select is((select count(*) from public.platform_secrets s where s.id = :'ps' and s.name = 'pgtap-ssh-key'
           and s.current_version = 1), 1::bigint, 'the metadata row names the secret at version 1');
select is((select count(*) from pg_temp.new_log('create', 'success') l
           where l.secret_id = :'ps' and l.version = 1 and l.org_id is null and l.deployment_id is null
             and l.chain_id = :'platform' and l.actor = 'ops:alice' and l.job_id = 'job-p1'
             and l.request_ip = '192.0.2.20' and l.user_agent = 'pgtap'),
  1::bigint, 'create is audited with the audit context, without an org, in the platform chain');
select throws_ok($$select public.platform_secrets__create('pgtap-ssh-key', 'another-value-0001-long-enough', repeat('ab', 32))$$, '23505',
  'name: a platform secret with this name already exists; rotate it instead', 'a second secret of the same name is refused');

-- ---- read ------------------------------------------------------------------------------------------
select pg_temp.mark() as marked \gset
set local role cortex_orchestrator;
select public.platform_secrets__read('pgtap-ssh-key', 'worker-7', 'provision-p2', '198.51.100.9', 'cortex-worker', p_intent_id => pg_temp.platform_intent('pgtap-ssh-key'))
  as result \gset
reset role;
select is(:'result'::jsonb, jsonb_build_object('status', 'ok', 'value', :'key1', 'version', 1),
  'cortex_orchestrator reads the value and its version');
select is((:'result'::jsonb) ->> 'value', :'key1', 'the value comes back byte for byte, line feeds included');
select is((select count(*) from pg_temp.new_log('read', 'success') l
           where l.secret_id = :'ps' and l.version = 1 and l.org_id is null and l.chain_id = :'platform'
             and l.actor = 'worker-7' and l.job_id = 'provision-p2' and l.request_ip = '198.51.100.9'
             and l.user_agent = 'cortex-worker'),
  1::bigint, 'the read is audited in the platform chain, in the same transaction');
select is((select count(*) from pg_temp.new_log('read', 'success')), 1::bigint, 'and only once');

select pg_temp.mark() as marked \gset
set local role cortex_orchestrator;
select lives_ok($$select public.platform_secrets__read('pgtap-no-such-key', 'worker-8')$$,
  'reading an unknown name does not raise');
select is(public.platform_secrets__read('pgtap-no-such-key', p_intent_id => pg_temp.platform_intent('pgtap-no-such-key')),
  '{"status": "denied", "reason": "platform secret pgtap-no-such-key not found"}'::jsonb,
  'it is a denial naming the name, with no value');
reset role;
select is((select count(*) from pg_temp.new_log('read', 'denied') l
           where l.secret_id is null and l.org_id is null and l.chain_id = :'platform' and l.actor = 'worker-8'
             and l.reason = 'platform secret pgtap-no-such-key not found'),
  1::bigint, 'the denial is audited in the platform chain, and the row outlived the call');

select is((select count(*) from public.secret_access_log l
           where l.chain_id = '00000000-0000-0000-0000-000000000000' and l.reason like 'platform secret%'),
  0::bigint, 'no platform event lands in the chain of org-less customer events');
select is((select count(*) from public.secret_access_log l where l::text like '%canary%' or l::text like '%BEGIN OPENSSH%'),
  0::bigint, 'no audit row holds a value');
select is((select count(*) from public.platform_secrets s, public.platform_secret_versions v
           where v.secret_id = s.id and (s::text like '%BEGIN OPENSSH%' or v::text like '%BEGIN OPENSSH%')),
  0::bigint, 'no metadata row holds a value');

-- ---- rotate ----------------------------------------------------------------------------------------
select pg_temp.mark() as marked \gset
set local role cortex_orchestrator;
select public.platform_secrets__rotate('pgtap-ssh-key', :'key2', pg_temp.fp(:'key2'), 'ops:bob') as rotated \gset
reset role;
select is((:'rotated'::jsonb) - 'display_prefix',
  jsonb_build_object('secret_id', :'ps', 'name', 'pgtap-ssh-key', 'version', 2,
    'fingerprint', pg_temp.fp(:'key2'), 'vault_name', 'platform:pgtap-ssh-key:v2'),
  'rotation makes the new value version 2');
select is(public.platform_secrets__read('pgtap-ssh-key', p_intent_id => pg_temp.platform_intent('pgtap-ssh-key')), jsonb_build_object('status', 'ok', 'value', :'key2', 'version', 2),
  'the next read returns version 2');
select is((select count(*) from vault.secrets where name = 'platform:pgtap-ssh-key:v1'), 0::bigint,
  'version 1''s vault secret is gone');
select isnt((select retired_at from public.platform_secret_versions where secret_id = :'ps' and version = 1), null,
  'and version 1 is marked retired');
select is((select array_agg(l.operation || '/' || l.version order by l.id) from public.secret_access_log l
           where l.id > (select id from log_mark) and l.secret_id = :'ps' and l.operation in ('rotate', 'delete')),
  array['rotate/2', 'delete/1'], 'the rotation and the deletion of version 1 are audited');
select is((select actor from pg_temp.new_log('rotate', 'success')), 'ops:bob', 'with the audit context');
select throws_ok($$select public.platform_secrets__rotate('pgtap-no-such-key', 'value-0003-long-enough-too', repeat('ab', 32))$$, 'P0002',
  'platform secret pgtap-no-such-key not found', 'rotating an unknown name is refused');

-- ---- the platform chain ---------------------------------------------------------------------------------
select is(public.secret_access_log__verify(:'platform') ->> 'ok', 'true', 'the platform chain verifies');
select is(public.secret_access_log__verify() ->> 'ok', 'true', 'every chain verifies');
select is(
  (select count(*) from public.secret_access_log l
   left join public.secret_access_log p on p.id = l.prev_id
   where l.chain_id = :'platform' and l.id > (select min(id) - 1 from public.secret_access_log where secret_id = :'ps')
     and not (p.chain_id = :'platform' and p.seq = l.seq - 1 and l.prev_hash = p.hash)),
  0::bigint, 'each platform row names the previous platform row and carries its hash');
select ok((select seq from public.secret_access_log where secret_id = :'ps' and operation = 'read' and version = 2)
          = (select seq from public.secret_access_log where secret_id = :'ps' and operation = 'delete') + 1,
  'ids and seqs of one chain move together');

select id as p_read from public.secret_access_log where secret_id = :'ps' and operation = 'read' and version = 1 \gset
savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set actor = 'someone-else' where id = :'p_read';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'platform') - 'rows_checked',
  jsonb_build_object('ok', false, 'first_bad_id', :'p_read'::bigint, 'problem', 'changed'),
  'a changed platform row is named');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set chain_id = '00000000-0000-0000-0000-000000000000' where id = :'p_read';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'platform') ->> 'ok', 'false',
  'moving a platform row to another chain breaks the platform chain');
select is(public.secret_access_log__verify('00000000-0000-0000-0000-000000000000') ->> 'ok', 'false',
  'and the chain it was moved to');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set reason = 'nothing to see' where id = :'p_read';
update public.secret_access_log l set hash = public.secret_access_log__hash(l) where id = :'p_read';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'platform') ->> 'problem', 'changed',
  'a changed and re-hashed platform row is caught by its successor');
rollback to savepoint tamper;

-- ---- bad input: refused with the field named, no value echoed, nothing changed ---------------------------
create temp table counts_before as
select (select count(*) from public.platform_secrets) as secrets,
       (select count(*) from public.platform_secret_versions) as versions,
       (select count(*) from vault.secrets) as vault, (select count(*) from public.secret_access_log) as log;

select throws_ok(format('select public.platform_secrets__create(%L, %L, repeat(''ab'', 32))', 'pgtap-bad', 'canary-platform-input' || c || 'tail'),
  '22023', 'value: must not contain control characters other than line feeds (U+0000-U+0009, U+000B-U+001F, U+007F)',
  'a value containing ' || to_hex(ascii(c)) || 'h is refused')
from unnest(array[chr(1), chr(9), chr(13), chr(27), chr(31), chr(127)]) c;
select throws_ok(format('select public.platform_secrets__create(%L, %L, repeat(''ab'', 32))', 'pgtap-bad', E'line one\r\nline two\r\n'),
  '22023', 'value: must not contain control characters other than line feeds (U+0000-U+0009, U+000B-U+001F, U+007F)',
  'CRLF line ends are refused: only U+000A ends a line');
select throws_ok(format('select public.platform_secrets__create(%L, %L, repeat(''ab'', 32))', 'pgtap-bad', repeat(E'abcdefg\n', 2048) || 'x'),
  '22023', 'value: must be at most 16384 characters', 'a value of 16385 characters is refused');
select throws_ok(format('select public.platform_secrets__create(%L, %L, repeat(''ab'', 32))', 'pgtap-bad', ''), '22023',
  'value: must not be empty', 'an empty value is refused');
select throws_ok($$select public.platform_secrets__create('pgtap-bad', null, repeat('ab', 32))$$, '22023',
  'value: must not be empty', 'a null value is refused');
select throws_ok(format('select public.platform_secrets__create(%L, %L, repeat(''ab'', 32))', 'pgtap-bad', E' \n \n'), '22023',
  'value: must not be blank', 'a value of spaces and line feeds is refused');
select throws_ok(format('select public.platform_secrets__rotate(%L, %L, repeat(''ab'', 32))', 'pgtap-ssh-key', 'canary' || chr(9)), '22023',
  'value: must not contain control characters other than line feeds (U+0000-U+0009, U+000B-U+001F, U+007F)',
  'rotate checks the value too');
select throws_ok(format('select public.platform_secrets__create(%L, %L, repeat(''ab'', 32))', n, 'value-0004'), '22023',
  'name: must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters',
  'name ' || replace(quote_literal(n), E'\n', '\n') || ' is refused')
from unnest(array['', 'Upper', 'has space', 'colon:name', '-leading', '.leading', repeat('a', 64), E'new\nline']) n;
select throws_ok($$select public.platform_secrets__create(null, 'value-0005', repeat('ab', 32))$$, '22023',
  'name: must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters',
  'a null name is refused');
select throws_ok($$select public.platform_secrets__read('Not A Name')$$, '22023',
  'name: must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters',
  'read refuses a malformed name as bad input');
select throws_ok(format('select public.platform_secrets__read(%L, %L)', 'pgtap-ssh-key', repeat('a', 201)), '22023',
  'actor: must be at most 200 characters', 'read checks the audit context');
select is(
  (select row((select count(*) from public.platform_secrets), (select count(*) from public.platform_secret_versions),
              (select count(*) from vault.secrets), (select count(*) from public.secret_access_log))::text),
  (select row(secrets, versions, vault, log)::text from counts_before),
  'the refused calls changed nothing and wrote no audit row');
select lives_ok(format('select public.platform_secrets__create(%L, %L, repeat(''ab'', 32))', 'pgtap-big', repeat(E'abcdefg\n', 2048)),
  'a value of exactly 16384 characters over 2048 lines is accepted');
select is(public.platform_secrets__read('pgtap-big', p_intent_id => pg_temp.platform_intent('pgtap-big')) ->> 'value', repeat(E'abcdefg\n', 2048), 'and reads back whole');

-- ---- who may ----------------------------------------------------------------------------------------
set local role anon;
select throws_ok($$select public.platform_secrets__read('pgtap-ssh-key')$$, '42501', null, 'anon cannot read a platform secret');
reset role;
select set_config('request.jwt.claims', json_build_object('sub', gen_random_uuid(), 'role', 'authenticated')::text, true)
  is not null as ok \gset
set local role authenticated;
select throws_ok($$select public.platform_secrets__read('pgtap-ssh-key')$$, '42501', null,
  'authenticated cannot read a platform secret');
select throws_ok($$select count(*) from public.platform_secrets$$, '42501', null,
  'authenticated cannot see platform secrets'' metadata');
select is((select count(*) from public.secret_access_log l where l.chain_id = :'platform'), 0::bigint,
  'nor their audit rows');
reset role;

select * from finish();
rollback;
