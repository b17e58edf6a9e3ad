-- The secret access log (DESIGN invariant 3): append-only for everyone, superuser included;
-- hash-chained per org; secret_access_log__verify names the first changed, removed or reordered
-- row; retention is the only way out and leaves the chain verifiable.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(58);
\ir support/read_intent.psql

select public.organizations__create('Test Org Log A') ->> 'id' as org_a \gset
select public.organizations__create('Test Org Log B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'A1', 'test-log-a1') ->> 'id' as dep_a \gset
select public.deployments__create(:'org_b', 'B1', 'test-log-b1') ->> 'id' as dep_b \gset

-- interleave the two orgs' writes: A gets 6 rows, B 4
select public.secrets__create(:'org_a', 'k', 'other', 'canary-log-a-0001-pa', repeat('ab', 32)) ->> 'secret_id' as s_a \gset
select public.secrets__create(:'org_b', 'k', 'other', 'canary-log-b-0001-pa', repeat('ab', 32)) ->> 'secret_id' as s_b \gset
select public.deployment_secrets__bind(:'dep_a', 'KEY', :'s_a') is not null as ok \gset
select public.deployment_secrets__bind(:'dep_b', 'KEY', :'s_b') is not null as ok \gset
select public.deployment_secrets__read(:'dep_a', p_intent_id => pg_temp.read_intent(:'dep_a', null)) is not null as ok \gset
select public.deployment_secrets__read(:'dep_b', p_intent_id => pg_temp.read_intent(:'dep_b', null)) is not null as ok \gset
select public.secrets__add_version(:'s_a', 'canary-log-a-0002-pa', repeat('ab', 32)) is not null as ok \gset
select public.deployment_secrets__read(:'dep_a', p_intent_id => pg_temp.read_intent(:'dep_a', null)) is not null as ok \gset
-- (a secret B does not have: another org's would be refused in A's chain too)
select public.deployment_secrets__read(:'dep_b', array['00000000-0000-0000-0000-00000000dead']::uuid[]) is not null as ok \gset
select public.secret_versions__retire(:'s_a', 1) is not null as ok \gset

create temp table a_rows as
select row_number() over (order by id) as pos, id from public.secret_access_log where org_id = :'org_a';
select id as a1 from a_rows where pos = 1 \gset
select id as a2 from a_rows where pos = 2 \gset
select id as a3 from a_rows where pos = 3 \gset
select id as a6 from a_rows where pos = 6 \gset

-- ---- the chain -----------------------------------------------------------------------------------
select is((select array_agg(seq order by id) from public.secret_access_log where org_id = :'org_a'),
  array[1, 2, 3, 4, 5, 6]::bigint[], 'org A''s rows are numbered 1..6 in their own chain');
select is((select array_agg(seq order by id) from public.secret_access_log where org_id = :'org_b'),
  array[1, 2, 3, 4]::bigint[], 'org B''s rows are numbered 1..4 in theirs, unaffected by A''s');
select is(
  (select count(*) from public.secret_access_log l
   left join public.secret_access_log p on p.id = l.prev_id
   where l.org_id = :'org_a'
     and ((l.seq = 1 and l.prev_id is null and l.prev_hash = repeat('0', 64))
          or (l.seq > 1 and p.seq = l.seq - 1 and p.org_id = l.org_id and l.prev_hash = p.hash))),
  6::bigint, 'each row names the previous row of its org and carries its hash');
select is((select array[head_seq, head_id] from public.secret_access_log_chains where chain_id = :'org_a'),
  array[6::bigint, :'a6'::bigint], 'the chain head records the last row');
select is(public.secret_access_log__verify(:'org_a'),
  '{"ok": true, "rows_checked": 6, "first_bad_id": null, "problem": null}'::jsonb, 'verify of org A: ok');
select is(public.secret_access_log__verify(:'org_b') ->> 'ok', 'true', 'verify of org B: ok');
select is(public.secret_access_log__verify() ->> 'ok', 'true', 'verify of every org: ok');
select is((select count(*) from public.secret_access_log l where l::text like '%canary-log%'), 0::bigint,
  'no audit row holds a value');

-- ---- append-only ----------------------------------------------------------------------------------
set local role service_role;
select throws_ok(format('update public.secret_access_log set reason = %L where id = %s', 'x', :'a1'), '42501',
  'permission denied for table secret_access_log', 'service_role cannot update the log');
select throws_ok(format('delete from public.secret_access_log where id = %s', :'a1'), '42501',
  'permission denied for table secret_access_log', 'service_role cannot delete from the log');
select throws_ok($$insert into public.secret_access_log (operation, outcome, seq, prev_hash, hash) values ('read', 'success', 1, '', '')$$,
  '42501', 'permission denied for table secret_access_log', 'service_role cannot write the log directly');
select throws_ok($$truncate public.secret_access_log$$, '42501', null, 'service_role cannot truncate the log');
set local cortex.audit_retention = 'on';
select throws_ok(format('delete from public.secret_access_log where id = %s', :'a1'), '42501',
  'permission denied for table secret_access_log', 'service_role cannot borrow the retention flag');
reset cortex.audit_retention;
reset role;

set local role authenticated;
select throws_ok(format('update public.secret_access_log set reason = %L where id = %s', 'x', :'a1'), '42501', null,
  'authenticated cannot update the log');
reset role;

select throws_ok(format('update public.secret_access_log set reason = %L where id = %s', 'x', :'a1'), '42501',
  'secret_access_log is append-only: update refused (rows leave only through secret_access_log__apply_retention)',
  'a superuser cannot update the log either');
select throws_ok(format('delete from public.secret_access_log where id = %s', :'a1'), '42501',
  'secret_access_log is append-only: delete refused (rows leave only through secret_access_log__apply_retention)',
  'a superuser cannot delete from the log either');
select throws_ok($$truncate public.secret_access_log$$, '42501',
  'secret_access_log is append-only: truncate refused (rows leave only through secret_access_log__apply_retention)',
  'a superuser cannot truncate the log either');
select is((select count(*) from public.secret_access_log where org_id = :'org_a'), 6::bigint, 'org A still has 6 rows');

-- ---- tampering, as a superuser who bypasses the triggers --------------------------------------------
savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set outcome = 'denied' where id = :'a3';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 6, 'first_bad_id', :'a3'::bigint, 'problem', 'changed'),
  'a changed row is named');
select is(public.secret_access_log__verify(:'org_b') ->> 'ok', 'true', 'the other org''s chain still verifies');
select is(public.secret_access_log__verify() -> 'first_bad_id', to_jsonb(:'a3'::bigint),
  'verify of every org names the same row');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set reason = 'nothing to see' where id = :'a3';
-- an attacker who knows the hash function rewrites the row's hash too
update public.secret_access_log l set hash = public.secret_access_log__hash(l) where id = :'a3';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 6, 'first_bad_id', :'a3'::bigint, 'problem', 'changed'),
  'a changed and re-hashed row is named: its successor committed to the old hash');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set reason = 'nothing to see' where id = :'a6';
update public.secret_access_log l set hash = public.secret_access_log__hash(l) where id = :'a6';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 6, 'first_bad_id', :'a6'::bigint, 'problem', 'changed'),
  'a changed and re-hashed last row is named: the chain head committed to the old hash');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
delete from public.secret_access_log where id = :'a3';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 5, 'first_bad_id', :'a3'::bigint, 'problem', 'removed'),
  'a removed row is named');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
delete from public.secret_access_log where id = :'a1';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 5, 'first_bad_id', :'a1'::bigint, 'problem', 'removed'),
  'a removed first row is named');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
delete from public.secret_access_log where id = :'a6';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 5, 'first_bad_id', :'a6'::bigint, 'problem', 'removed'),
  'a removed last row is named (the chain head still records it)');
rollback to savepoint tamper;

-- reorder: rows 2 and 3 trade places, each keeping its own content and hash
savepoint tamper;
create temp table swapped as select * from public.secret_access_log where id in (:'a2', :'a3');
set local session_replication_role = replica;
update public.secret_access_log set seq = -seq where id in (:'a2', :'a3');
update public.secret_access_log l
set (at, org_id, deployment_id, secret_id, version, operation, outcome, actor, job_id, request_ip, user_agent, reason,
     seq, prev_id, prev_hash, hash)
  = (select o.at, o.org_id, o.deployment_id, o.secret_id, o.version, o.operation, o.outcome, o.actor, o.job_id,
            o.request_ip, o.user_agent, o.reason, o.seq, o.prev_id, o.prev_hash, o.hash
     from swapped o where o.id = case when l.id = :'a2' then :'a3'::bigint else :'a2'::bigint end)
where l.id in (:'a2', :'a3');
set local session_replication_role = origin;
select is((select count(*) from public.secret_access_log l where l.id in (:'a2', :'a3')
           and l.hash = public.secret_access_log__hash(l)), 2::bigint,
  '(both moved rows still match their own hashes)');
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 6, 'first_bad_id', :'a2'::bigint, 'problem', 'reordered'),
  'reordered rows are named');
rollback to savepoint tamper;

savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set seq = -seq where id in (:'a2', :'a3');
update public.secret_access_log set seq = 3 where id = :'a2';
update public.secret_access_log set seq = 2 where id = :'a3';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 6, 'first_bad_id', :'a2'::bigint, 'problem', 'changed'),
  'renumbering rows changes them (seq is part of the hash)');
rollback to savepoint tamper;

select is(public.secret_access_log__verify(:'org_a') ->> 'ok', 'true', 'after the rollbacks, org A verifies again');

-- ---- retention ---------------------------------------------------------------------------------------
-- Owner-only, with the owner's minimum age (cortex.audit_retention_min_age of the database, 365
-- days when unset), which no session can lower with SET.
select throws_ok($$select public.secret_access_log__apply_retention(clock_timestamp() + interval '1 hour')$$, '22023',
  'before: must be at least 365 days ago (the database owner''s cortex.audit_retention_min_age)',
  'retention into the future is refused');
select throws_ok($$select public.secret_access_log__apply_retention(clock_timestamp() - interval '364 days')$$, '22023',
  null, 'retention younger than the default minimum age (365 days) is refused');
select is(public.secret_access_log__apply_retention() ->> 'chains_trimmed', '0',
  'without a cut-off, retention trims what is older than the minimum age: nothing here');
set local cortex.audit_retention_min_age = '0 seconds';
select throws_ok($$select public.secret_access_log__apply_retention(clock_timestamp())$$, '22023', null,
  'a session setting does not lower the minimum age');
reset cortex.audit_retention_min_age;
-- the owner lowers it for this test (inside this transaction, rolled back with it)
do $$ begin execute format('alter database %I set cortex.audit_retention_min_age = %L', current_database(), '0 seconds'); end $$;

select clock_timestamp() as cut \gset
select public.deployment_secrets__read(:'dep_a', p_intent_id => pg_temp.read_intent(:'dep_a', null)) is not null as ok \gset
select public.deployment_secrets__read(:'dep_a', p_intent_id => pg_temp.read_intent(:'dep_a', null)) is not null as ok \gset
select public.deployment_secrets__read(:'dep_b', p_intent_id => pg_temp.read_intent(:'dep_b', null)) is not null as ok \gset

-- a chain that does not verify is not trimmed: trimming would destroy the evidence
savepoint tamper;
set local session_replication_role = replica;
update public.secret_access_log set reason = 'x' where org_id = :'org_b' and seq = 2;
set local session_replication_role = origin;
select ok((public.secret_access_log__apply_retention(:'cut') -> 'chains_skipped') ? :'org_b',
  'retention skips a chain that does not verify');
select is((select count(*) from public.secret_access_log where org_id = :'org_b'), 5::bigint, 'and deletes none of its rows');
rollback to savepoint tamper;

select public.secret_access_log__apply_retention(:'cut') as retention \gset
select ok(((:'retention'::jsonb) ->> 'deleted')::int >= 10, 'retention deletes the rows older than the cut');
select is((select count(*) from public.secret_access_log where org_id in (:'org_a', :'org_b') and at < :'cut'), 0::bigint,
  'no row of either org older than the cut remains');
select is((select array_agg(operation order by seq) from public.secret_access_log where org_id = :'org_a'),
  array['read', 'read', 'retention'], 'org A keeps its 2 newer rows, then retention''s own event');
select is((select count(*) from public.secret_access_log where org_id = :'org_b' and operation = 'retention'
           and actor = 'audit-retention' and reason like 'retention: 4 rows before % removed, through seq 4 (row %); minimum age 00:00:00'),
  1::bigint, 'every trimmed chain gets the event, saying what went');
select is((select array[anchor_seq, anchor_id] from public.secret_access_log_chains where chain_id = :'org_a'),
  array[6::bigint, :'a6'::bigint], 'the chain records the last removed row as its anchor');
select is(public.secret_access_log__verify(:'org_a'),
  '{"ok": true, "rows_checked": 3, "first_bad_id": null, "problem": null}'::jsonb, 'org A still verifies after retention');
select is(public.secret_access_log__verify(:'org_b') ->> 'ok', 'true', 'org B still verifies after retention');
select public.deployment_secrets__read(:'dep_a', p_intent_id => pg_temp.read_intent(:'dep_a', null)) is not null as ok \gset
select is((select max(seq) from public.secret_access_log where org_id = :'org_a'), 10::bigint, 'the chain carries on at seq 10');
select is(public.secret_access_log__verify(:'org_a') ->> 'ok', 'true', 'and verifies');

select id as a7 from public.secret_access_log where org_id = :'org_a' and seq = 7 \gset
savepoint tamper;
set local session_replication_role = replica;
delete from public.secret_access_log where id = :'a7';
set local session_replication_role = origin;
select is(public.secret_access_log__verify(:'org_a'),
  jsonb_build_object('ok', false, 'rows_checked', 3, 'first_bad_id', :'a7'::bigint, 'problem', 'removed'),
  'after retention, removing the first remaining row is still detected');
rollback to savepoint tamper;

select throws_ok(format('delete from public.secret_access_log where id = %s', :'a7'), '42501', null,
  'outside the retention function, deleting stays refused');

-- ---- retention is recognised by role, not by a setting ------------------------------------------------
set local cortex.audit_retention = 'on';
select throws_ok(format('delete from public.secret_access_log where id = %s', :'a7'), '42501',
  'secret_access_log is append-only: delete refused (rows leave only through secret_access_log__apply_retention)',
  'the old retention setting opens nothing, even for a superuser');
reset cortex.audit_retention;
select ok(not pg_has_role('authenticator', 'cortex_audit_retention', 'member')
          and not pg_has_role('cortex_orchestrator', 'cortex_audit_retention', 'member')
          and not pg_has_role('service_role', 'cortex_audit_retention', 'member'),
  'no API role (authenticator included) can become cortex_audit_retention');
select ok(not has_schema_privilege('cortex_audit_retention', 'public', 'create'),
  'the retention role cannot create objects in public');
select is((select array_agg(r.rolname order by r.rolname) from pg_roles r
           where r.rolname in ('anon', 'authenticated', 'service_role', 'cortex_orchestrator', 'authenticator')
             and has_function_privilege(r.oid, 'public.secret_access_log__apply_retention(timestamptz)', 'execute')),
  null, 'no API role may call retention');

-- ---- the chain heads only move forward ---------------------------------------------------------------
select throws_ok(format('update public.secret_access_log_chains set head_seq = 1, head_id = null where chain_id = %L', :'org_a'),
  '42501', 'secret_access_log_chains: a chain head only moves forward (and only retention moves its anchor)',
  'a head cannot move back, even for a superuser');
select throws_ok(format('update public.secret_access_log_chains set head_hash = repeat(%L, 64) where chain_id = %L', 'a', :'org_a'),
  '42501', null, 'a head''s hash cannot change without its seq');
select throws_ok(format('update public.secret_access_log_chains set anchor_seq = anchor_seq + 1 where chain_id = %L', :'org_a'),
  '42501', null, 'only retention moves an anchor');
select throws_ok(format('delete from public.secret_access_log_chains where chain_id = %L', :'org_a'), '42501',
  'secret_access_log_chains: delete refused (a chain head is never removed)', 'a head cannot be deleted');
select throws_ok('truncate public.secret_access_log_chains', '42501', null, 'the heads cannot be truncated');
select throws_ok($$insert into public.secret_access_log_chains (chain_id, head_seq) values (gen_random_uuid(), 5)$$, '42501',
  'secret_access_log_chains: a chain head starts empty', 'a head cannot be planted mid-chain');
select is(public.secret_access_log__verify() ->> 'ok', 'true', 'every chain still verifies');

select * from finish();
rollback;
