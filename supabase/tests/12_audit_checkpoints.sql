-- What signed audit checkpoints read (20261130100000_audit_checkpoints.sql): every chain's head,
-- and the stored hash at a signed sequence number. Only the orchestrator's role may call them.
-- Signing, and the tamperings a checkpoint catches, are in test/integration/audit-checkpoints.test.ts.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(28);

create temp table cp_fn (fn regprocedure primary key, call text not null);
insert into cp_fn values
  ('public.secret_access_log__heads()', $$select public.secret_access_log__heads()$$),
  ('public.secret_access_log__hashes_at(uuid[], bigint[])',
   $$select public.secret_access_log__hashes_at(array[gen_random_uuid()], array[1]::bigint[])$$);
grant select on cp_fn to anon, authenticated, service_role;

-- ---- shape and privileges ---------------------------------------------------------------------------
select is(
  (select array_agg(fn::text order by fn::text) from cp_fn c join pg_proc p on p.oid = c.fn
   where not p.prosecdef or p.prorettype <> 'jsonb'::regtype
      or not coalesce(p.proconfig = array['search_path=pg_catalog, pg_temp'], false)),
  null, 'both are security definer, return jsonb and pin search_path = pg_catalog, pg_temp');
select ok(has_function_privilege('cortex_orchestrator', fn, 'execute'), 'cortex_orchestrator may execute ' || fn::text)
from cp_fn order by fn::text;
select ok(not has_function_privilege(r, fn, 'execute'), r || ' may not execute ' || fn::text)
from cp_fn, unnest(array['anon', 'authenticated', 'service_role']) r order by fn::text, r;
select is(
  (select count(*) from cp_fn c join pg_proc p on p.oid = c.fn, aclexplode(p.proacl) a where a.grantee = 0),
  0::bigint, 'PUBLIC holds EXECUTE on neither');

create function pg_temp.sqlstate_of(p_sql text) returns text language plpgsql as $$
begin
  execute p_sql;
  return '00000';
exception when others then
  return sqlstate;
end
$$;
grant execute on function pg_temp.sqlstate_of(text) to anon, authenticated, service_role, cortex_orchestrator;
set local role anon;
select is(pg_temp.sqlstate_of(call), '42501', 'anon calling ' || fn::text || ' is denied') from cp_fn order by fn::text;
reset role;
set local role authenticated;
select is(pg_temp.sqlstate_of(call), '42501', 'authenticated calling ' || fn::text || ' is denied') from cp_fn order by fn::text;
reset role;
set local role service_role;
select is(pg_temp.sqlstate_of(call), '42501', 'service_role calling ' || fn::text || ' is denied') from cp_fn order by fn::text;
reset role;

-- ---- what they return -------------------------------------------------------------------------------
select public.organizations__create('Test Org Checkpoints') ->> 'id' as org \gset
select public.secrets__create(:'org', 'one', 'other', 'canary-checkpoint-' || md5(random()::text), repeat('ab', 32)) is not null as ok \gset
select public.secrets__create(:'org', 'two', 'other', 'canary-checkpoint-' || md5(random()::text), repeat('ab', 32)) is not null as ok \gset
select hash as hash1 from public.secret_access_log where chain_id = :'org' and seq = 1 \gset
select hash as hash2 from public.secret_access_log where chain_id = :'org' and seq = 2 \gset

set local role cortex_orchestrator;
select public.secret_access_log__heads() as heads \gset
select public.secret_access_log__hashes_at(array[:'org', :'org', :'org', gen_random_uuid()]::uuid[],
  array[2, 1, 3, 1]::bigint[]) as at \gset
reset role;

select ok((:'heads'::jsonb ->> 'at') ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$', 'heads: the time it was read, in UTC');
select is(
  (select c - 'at' from jsonb_array_elements(:'heads'::jsonb -> 'chains') c where c ->> 'chain' = :'org'),
  jsonb_build_object('chain', :'org'::uuid, 'seq', 2, 'hash', :'hash2'),
  'heads: the chain''s head sequence number and hash');
select is(
  (select (c ->> 'at')::timestamptz from jsonb_array_elements(:'heads'::jsonb -> 'chains') c where c ->> 'chain' = :'org'),
  (select at from public.secret_access_log where chain_id = :'org' and seq = 2),
  'heads: the time of the head row');
select is(:'at'::jsonb -> 0, jsonb_build_object('chain', :'org'::uuid, 'seq', 2, 'exists', true, 'head_seq', 2,
  'max_seq', 2, 'anchor_seq', 0, 'hash', :'hash2'), 'hashes_at: the head row''s hash');
select is(:'at'::jsonb -> 1 ->> 'hash', :'hash1', 'hashes_at: an earlier row''s hash, in the order asked');
select is(:'at'::jsonb -> 2, jsonb_build_object('chain', :'org'::uuid, 'seq', 3, 'exists', true, 'head_seq', 2,
  'max_seq', 2, 'anchor_seq', 0, 'hash', null), 'hashes_at: past the end, no hash and where the chain ends');
select is(:'at'::jsonb -> 3 -> 'exists', 'false'::jsonb, 'hashes_at: a chain that does not exist');
select is(jsonb_array_length(:'at'::jsonb), 4, 'hashes_at: one answer per question');

-- ---- bad input (as the owner: pgTAP is not the orchestrator's to call) ---------------------------
select throws_ok($$select public.secret_access_log__hashes_at(array[gen_random_uuid()], array[]::bigint[])$$,
  '22023', 'seqs: must have one sequence number per chain id', 'hashes_at: arrays of different lengths');
select throws_ok($$select public.secret_access_log__hashes_at(array[null]::uuid[], array[1]::bigint[])$$,
  '22023', 'chain_ids: must not contain null (nor seqs)', 'hashes_at: a null chain id');
select throws_ok($$select public.secret_access_log__hashes_at(null, null)$$,
  '22023', 'chain_ids: chain_ids and seqs are required', 'hashes_at: null arrays');
select is(public.secret_access_log__hashes_at(array[]::uuid[], array[]::bigint[]), '[]'::jsonb,
  'hashes_at: nothing asked, nothing answered');

select * from finish();
rollback;
