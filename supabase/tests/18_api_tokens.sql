-- The API's tokens and idempotency keys (migration *_api_tokens.sql): only SHA-256 hashes are
-- stored (no plaintext column), scopes are the five named ones and admin only on ops tokens (a
-- check constraint, not just the function), a revoked token is refused at its next use, last use
-- is written at most once a minute, create/revoke leave append-only events, and an Idempotency-Key
-- replays its deployment for the same body and refuses another. Only the orchestrator's role may
-- call any of it; no API role touches the tables.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
-- pgTAP lives in `extensions`; the orchestrator's role needs it only to run assertions here (rolled back)
grant usage on schema extensions to cortex_orchestrator;
select plan(41);

create function pg_temp.sqlstate_of(p_sql text) returns text language plpgsql as $$
begin
  execute p_sql;
  return '00000';
exception when others then
  return sqlstate;
end
$$;
grant execute on function pg_temp.sqlstate_of(text) to cortex_orchestrator, service_role, anon, authenticated;

-- ---- privileges -----------------------------------------------------------------------------------
create temp table api_fns as
select p.oid::regprocedure as fn from pg_proc p
where p.pronamespace = 'public'::regnamespace
  and p.proname in ('api_tokens__create', 'api_tokens__authenticate', 'api_tokens__revoke', 'api_tokens__list',
                    'api_deployments__request', 'api_secrets__list', 'api_audit__org', 'api__ready');
select is((select count(*) from api_fns), 8::bigint, 'the API contract has 8 functions');
select is(
  (select array_agg(fn::text order by 1) from api_fns f join pg_proc p on p.oid = f.fn
   where not p.prosecdef or p.prorettype <> 'jsonb'::regtype
      or not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)),
  null, 'each is security definer, returns jsonb and pins search_path = pg_catalog, pg_temp');
select is(
  (select array_agg(fn::text order by 1) from api_fns
   where has_function_privilege('anon', fn, 'execute') or has_function_privilege('authenticated', fn, 'execute')
      or has_function_privilege('service_role', fn, 'execute')
      or not has_function_privilege('cortex_orchestrator', fn, 'execute')),
  null, 'cortex_orchestrator may execute each, and no API role may');
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.proname in ('api_tokens__check_hash', 'api_token_events__refuse_change')
     and (has_function_privilege('cortex_orchestrator', p.oid, 'execute')
          or has_function_privilege('service_role', p.oid, 'execute'))),
  null, 'the internal helpers are executable by no API role');
select is(
  (select array_agg(c.relname::text order by 1) from pg_class c
   where c.relnamespace = 'public'::regnamespace
     and c.relname in ('api_tokens', 'api_token_events', 'api_idempotency_keys') and not c.relrowsecurity),
  null, 'row-level security is enabled on the three tables');
select is(
  (select array_agg(r.rolname || ' ' || c.relname order by 1) from pg_class c, pg_roles r
   where c.relnamespace = 'public'::regnamespace
     and c.relname in ('api_tokens', 'api_token_events', 'api_idempotency_keys')
     and r.rolname in ('anon', 'authenticated', 'service_role', 'cortex_orchestrator')
     and has_table_privilege(r.rolname, c.oid, 'select, insert, update, delete, truncate, references, trigger')),
  null, 'no API role holds any privilege on the tables');
select columns_are('public', 'api_tokens',
  array['id', 'org_id', 'name', 'scopes', 'prefix', 'token_hash', 'created_at', 'created_by', 'last_used_at',
        'revoked_at', 'revoked_by'],
  'api_tokens has exactly these columns: a hash and an 8-character display prefix, no plaintext');

-- ---- fixtures ---------------------------------------------------------------------------------------
select public.organizations__create('Token Org A') ->> 'id' as org_a \gset
select public.organizations__create('Token Org B') ->> 'id' as org_b \gset
select encode(sha256('ctx_token_a'::bytea), 'hex') as hash_a \gset
select encode(sha256('ctx_token_b'::bytea), 'hex') as hash_b \gset
select encode(sha256('ctx_token_ops'::bytea), 'hex') as hash_ops \gset

-- ---- the check constraint holds without the function ----------------------------------------------
select is(pg_temp.sqlstate_of(format(
  $$insert into public.api_tokens (org_id, name, scopes, prefix, token_hash) values (%L, 'x', array['root'], 'abcdefgh', %L)$$,
  :'org_a', repeat('1', 64))), '23514', 'an unknown scope is refused by the table''s check');
select is(pg_temp.sqlstate_of(format(
  $$insert into public.api_tokens (org_id, name, scopes, prefix, token_hash) values (%L, 'x', array['admin'], 'abcdefgh', %L)$$,
  :'org_a', repeat('2', 64))), '23514', 'admin on an organisation''s token is refused by the table''s check');
select is(pg_temp.sqlstate_of(format(
  $$insert into public.api_tokens (org_id, name, scopes, prefix, token_hash) values (%L, 'x', array['audit:read'], 'abcdefgh', 'ctx_plaintext')$$,
  :'org_a')), '23514', 'a token_hash that is not a SHA-256 hex digest (a plaintext) is refused');

-- ---- create ---------------------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.api_tokens__create(:'org_a', 'a', array['deployments:read', 'secrets:write'], 'AbCd1234', :'hash_a', 'pgtap') ->> 'id' as tok_a \gset
select public.api_tokens__create(:'org_b', 'b', array['deployments:read'], 'BbCd1234', :'hash_b') ->> 'id' as tok_b \gset
select public.api_tokens__create(null, 'ops', array['admin', 'audit:read'], 'OpCd1234', :'hash_ops', 'pgtap') ->> 'id' as tok_ops \gset
select throws_ok(format($$select public.api_tokens__create(%L, 'x', array['secrets:read'], 'AbCd1234', %L)$$, :'org_a', repeat('3', 64)),
  '22023', 'scopes: each must be one of secrets:write, deployments:write, deployments:read, audit:read, admin',
  'create refuses an unknown scope, naming the field');
select throws_ok(format($$select public.api_tokens__create(%L, 'x', array['admin'], 'AbCd1234', %L)$$, :'org_a', repeat('3', 64)),
  '22023', 'scopes: admin is for ops tokens only (no organization)', 'create refuses admin for an organisation');
select throws_ok(format($$select public.api_tokens__create(%L, 'x', array[]::text[], 'AbCd1234', %L)$$, :'org_a', repeat('3', 64)),
  '22023', 'scopes: at least one scope is required', 'create refuses no scope');
select throws_ok(format($$select public.api_tokens__create(%L, 'x', array['audit:read'], 'AbCd1234', 'ctx_plain')$$, :'org_a'),
  '22023', 'hash: must be 64 lowercase hex digits (SHA-256)', 'create refuses a value that is not a hash');
select throws_ok(format($$select public.api_tokens__create(%L, 'x', array['audit:read'], 'Ab', %L)$$, :'org_a', repeat('3', 64)),
  '22023', 'prefix: must be 8 base62 characters', 'create refuses a bad prefix');
select throws_ok(format($$select public.api_tokens__create(gen_random_uuid(), 'x', array['audit:read'], 'AbCd1234', %L)$$, repeat('3', 64)),
  'P0002', null, 'create refuses an unknown organisation');
select throws_ok(format($$select public.api_tokens__create(%L, 'x', array['audit:read'], 'AbCd1234', %L)$$, :'org_a', :'hash_a'),
  '23505', null, 'a hash is unique');
reset role;

-- ---- authenticate ---------------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.api_tokens__authenticate(:'hash_a') as auth_a \gset
select public.api_tokens__authenticate(:'hash_ops') as auth_ops \gset
select public.api_tokens__authenticate(repeat('9', 64)) as auth_unknown \gset
reset role;
select is(:'auth_a'::jsonb, jsonb_build_object('status', 'ok', 'id', :'tok_a', 'org_id', :'org_a',
  'scopes', jsonb_build_array('deployments:read', 'secrets:write')), 'a live token authenticates to its id, org and scopes');
select is((:'auth_ops'::jsonb) -> 'org_id', 'null'::jsonb, 'an ops token has no organisation');
select is(:'auth_unknown'::jsonb, '{"status": "refused"}'::jsonb, 'an unknown hash is refused');
select isnt((select last_used_at from public.api_tokens where id = :'tok_a'), null, 'authenticate records the last use');

-- last use at most once a minute
update public.api_tokens set last_used_at = now() - interval '30 seconds' where id = :'tok_a';
select last_used_at as lu_before from public.api_tokens where id = :'tok_a' \gset
set local role cortex_orchestrator;
select public.api_tokens__authenticate(:'hash_a') is not null as x \gset
reset role;
select is((select last_used_at from public.api_tokens where id = :'tok_a'), :'lu_before'::timestamptz,
  'a use within a minute of the last writes nothing');
update public.api_tokens set last_used_at = now() - interval '2 minutes' where id = :'tok_a';
set local role cortex_orchestrator;
select public.api_tokens__authenticate(:'hash_a') is not null as x \gset
reset role;
select ok((select last_used_at > now() - interval '5 seconds' from public.api_tokens where id = :'tok_a'),
  'a use more than a minute after the last updates it');

-- ---- revoke ---------------------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.api_tokens__revoke(:'tok_b', 'pgtap') is not null as x \gset
select public.api_tokens__revoke(:'tok_b', 'pgtap again') is not null as x \gset
select public.api_tokens__authenticate(:'hash_b') as auth_b \gset
select public.api_tokens__list(:'org_b') as list_b \gset
select public.api_tokens__list(:'org_b', true) as list_b_all \gset
select public.api_tokens__list() as list_all \gset
reset role;
select is(:'auth_b'::jsonb, '{"status": "refused"}'::jsonb, 'a revoked token is refused at its next use');
select is((select revoked_by from public.api_tokens where id = :'tok_b'), 'pgtap', 'the revocation records who (the first one)');
select is((select array_agg(event || ':' || coalesce(actor, '-') order by id) from public.api_token_events where token_id = :'tok_b'),
  array['create:-', 'revoke:pgtap'], 'create and revoke each leave one event; revoking twice leaves one');
select is(jsonb_array_length(:'list_b'::jsonb), 0, 'list leaves revoked tokens out by default');
select is(jsonb_array_length(:'list_b_all'::jsonb), 1, 'list includes them on request');
select ok(position(:'hash_a' in :'list_all') = 0 and not (:'list_all'::jsonb -> 0 ? 'token_hash'),
  'list never returns a hash');
set local role cortex_orchestrator;
select throws_ok($$select public.api_tokens__revoke(gen_random_uuid())$$, 'P0002', null, 'revoking an unknown token is not found');
reset role;

-- ---- the events are append-only ---------------------------------------------------------------------
select is(pg_temp.sqlstate_of(format($$update public.api_token_events set actor = 'x' where token_id = %L$$, :'tok_b')),
  '42501', 'even the owner cannot change a token event');
select is(pg_temp.sqlstate_of('delete from public.api_token_events'), '42501', 'even the owner cannot delete token events');

-- ---- API roles cannot reach around the functions ------------------------------------------------------
set local role cortex_orchestrator;
select pg_temp.sqlstate_of('select token_hash from public.api_tokens') as orch_read \gset
select pg_temp.sqlstate_of(format($$update public.api_tokens set revoked_at = null where id = %L$$, :'tok_b')) as orch_unrevoke \gset
reset role;
select is(:'orch_read'::text, '42501', 'cortex_orchestrator cannot read token hashes directly');
select is(:'orch_unrevoke'::text, '42501', 'cortex_orchestrator cannot un-revoke a token directly');
set local role service_role;
select pg_temp.sqlstate_of(format($$select public.api_tokens__authenticate(%L)$$, :'hash_a')) as sr_auth \gset
reset role;
select is(:'sr_auth'::text, '42501', 'service_role cannot call authenticate');

-- ---- idempotency -------------------------------------------------------------------------------------
select 'ti-' || substr(md5(random()::text), 1, 8) as sub \gset
set local role cortex_orchestrator;
select public.api_deployments__request('key-1', repeat('a', 64), :'tok_a', :'org_a', 'Idem', :'sub') as r1 \gset
select public.api_deployments__request('key-1', repeat('a', 64), :'tok_a', :'org_a', 'Idem', :'sub') as r2 \gset
select public.api_deployments__request('key-1', repeat('b', 64), :'tok_a', :'org_a', 'Idem 2', :'sub') as r3 \gset
-- the same key in another organisation is another key
select 'ti-' || substr(md5(random()::text), 1, 8) as sub_b \gset
select public.api_deployments__request('key-1', repeat('b', 64), null, :'org_b', 'Idem B', :'sub_b') as r4 \gset
reset role;
select is((:'r1'::jsonb) ->> 'status' || ' ' || ((:'r1'::jsonb) ->> 'replayed'), 'ok false', 'the first request with a key creates');
select is((:'r2'::jsonb) ->> 'replayed' || ' ' || ((:'r2'::jsonb) #>> '{deployment,id}'), 'true ' || ((:'r1'::jsonb) #>> '{deployment,id}'),
  'the same key and body replay the same deployment');
select is(:'r3'::jsonb, '{"status": "mismatch"}'::jsonb, 'the same key with another body is a mismatch');
select is((:'r4'::jsonb) ->> 'replayed', 'false', 'keys are per organisation');
select is((select count(*) from public.deployments where org_id = :'org_a'), 1::bigint, 'one deployment for the key');
set local role cortex_orchestrator;
select throws_ok(format($$select public.api_deployments__request(%L, repeat('a', 64), null, %L, 'x', 'ti-x')$$, 'bad key', :'org_a'),
  '22023', 'idempotency_key: must be 1-200 visible ASCII characters', 'a key with a space is refused, naming the field');
reset role;

select * from finish();
rollback;
