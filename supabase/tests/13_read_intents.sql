-- Read intents (security review, item 6): a read returns values only against an intent committed
-- by another transaction, so that a read whose transaction rolls back still leaves a committed
-- trace. Here, inside one transaction: every way of making the intent in the read's own
-- transaction is refused. (The rollback and savepoint cases, which need real commits, are in
-- test/integration/audit-read-intent.test.ts.)
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(14);
\ir support/read_intent.psql

select public.organizations__create('Intent Org') ->> 'id' as org \gset
select public.deployments__create(:'org', 'I', 'test-intent-1') ->> 'id' as dep \gset
select public.deployments__create(:'org', 'J', 'test-intent-2') ->> 'id' as dep2 \gset
select 'sk-intent-' || encode(extensions.gen_random_bytes(12), 'hex') as value \gset
select public.secrets__create(:'org', 'k1', 'other', :'value', repeat('ab', 32)) ->> 'secret_id' as s1 \gset
select public.secrets__create(:'org', 'k2', 'other', :'value' || 'x', repeat('ab', 32)) ->> 'secret_id' as s2 \gset
select public.deployment_secrets__bind(:'dep', 'K1', :'s1') is not null as b \gset
select public.deployment_secrets__bind(:'dep', 'K2', :'s2') is not null as b \gset
select public.deployment_secrets__bind(:'dep2', 'K1', :'s1') is not null as b \gset
select public.platform_secrets__create('pgtap-intent-key', :'value', repeat('ab', 32)) is not null as p \gset

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
grant select on log_mark to cortex_orchestrator;

create function pg_temp.denied(p_result jsonb) returns boolean language sql as $$
  select p_result ->> 'status' = 'denied' and p_result::text not like '%sk-intent-%'
$$;

set local role cortex_orchestrator;
-- no intent at all
select public.deployment_secrets__read(:'dep') as r_none \gset
-- an intent made in this very transaction: its transaction is still in progress
select (public.deployment_secrets__intend_read(:'dep') ->> 'intent_id') as same_txn \gset
select public.deployment_secrets__read(:'dep', p_intent_id => :'same_txn') as r_same \gset
reset role;
select ok(pg_temp.denied(:'r_none'), 'a read without an intent is denied, with no value');
select is((:'r_none'::jsonb) ->> 'reason',
  'read intent missing, expired, for another read, or not committed: call deployment_secrets__intend_read in a transaction of its own first',
  'and says what to do');
select ok(pg_temp.denied(:'r_same'), 'an intent written in the read''s own transaction is refused');
select is((select count(*) from public.secret_access_log l where l.id > (select id from log_mark)
           and l.operation = 'read' and l.outcome = 'denied' and l.reason = 'no committed read intent'), 4::bigint,
  'each refusal is audited, one row per secret');

-- an intent made in a savepoint, released or rolled back: still this transaction's
savepoint s;
select (public.deployment_secrets__intend_read(:'dep') ->> 'intent_id') as sp_intent \gset
release savepoint s;
select ok(pg_temp.denied(public.deployment_secrets__read(:'dep', p_intent_id => :'sp_intent')),
  'an intent written in a (released) savepoint of the read''s transaction is refused');

-- committed intents that do not cover the read
select ok(pg_temp.denied(public.deployment_secrets__read(:'dep', p_intent_id => pg_temp.read_intent(:'dep2'))),
  'an intent for another deployment is refused');
select ok(pg_temp.denied(public.deployment_secrets__read(:'dep', p_intent_id => pg_temp.read_intent(:'dep', array[:'s1']::uuid[]))),
  'an intent for one secret does not cover a read of every bound secret');
select ok(pg_temp.denied(public.deployment_secrets__read(:'dep', array[:'s1', :'s2']::uuid[],
    p_intent_id => pg_temp.read_intent(:'dep', array[:'s1']::uuid[]))),
  'nor a read of two');
select ok(pg_temp.denied(public.deployment_secrets__read(:'dep', p_intent_id => gen_random_uuid())),
  'an unknown intent id is refused');
select ok(pg_temp.denied(public.deployment_secrets__read(:'dep', p_intent_id => pg_temp.platform_intent('pgtap-intent-key'))),
  'a platform intent does not cover a deployment read');
-- an intent older than 60 seconds (written, committed, by the superuser through dblink)
select t.id as old_intent from extensions.dblink(
  format('dbname=%s host=127.0.0.1 port=%s user=postgres', current_database(), current_setting('port')),
  format($q$insert into public.secret_read_intents (at, deployment_id, xact)
            values (clock_timestamp() - interval '61 seconds', %L, pg_current_xact_id()) returning id$q$, :'dep'))
  as t(id uuid) \gset
select ok(pg_temp.denied(public.deployment_secrets__read(:'dep', p_intent_id => :'old_intent')),
  'an intent older than 60 seconds is refused');

-- and the controls: a committed, fresh, matching intent reads
select is(public.deployment_secrets__read(:'dep', array[:'s1']::uuid[],
    p_intent_id => pg_temp.read_intent(:'dep', array[:'s1', :'s2']::uuid[])) -> 'secrets' -> 0 ->> 'value',
  :'value'::text, 'control: an intent covering the secrets asked for reads');
select is(public.platform_secrets__read('pgtap-intent-key', p_intent_id => pg_temp.platform_intent('pgtap-intent-key')) ->> 'value',
  :'value'::text, 'control: a platform read with its intent reads');
select ok(pg_temp.denied(public.platform_secrets__read('pgtap-intent-key')), 'a platform read without an intent is denied');

select * from finish();
rollback;
