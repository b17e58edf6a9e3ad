-- Revocations (20261204100000_revocations.sql; review R7 findings 1, 3, 4, 5): a revoke acts only
-- under an open revocation that secrets__request_revoke opened (a forged job's ids revoke
-- nothing), a whole-secret revocation blocks new bindings and rotations of its secret, one left
-- open is listed for the rotation sweep, and re-binding an env var to another secret drops the old
-- secret's pin (R7 finding 1, tests 1-4 as the review wrote them).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(72);
\ir support/read_intent.psql
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- ---- R7 FINDING 1: re-binding an env var to another secret drops the old secret's pin -------------------
select 'canary-r7-s1-v1-' || md5(random()::text) as s1_v1 \gset
select 'canary-r7-s1-v2-' || md5(random()::text) as s1_v2 \gset
select 'canary-r7-s2-old-' || md5(random()::text) as s2_old \gset
select 'canary-r7-s2-new-' || md5(random()::text) as s2_new \gset
select public.organizations__create('R7 findings') ->> 'id' as org \gset
select public.deployments__create(:'org', 'R7 F1', 'r7f1-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org', 'R7 F2', 'r7f2-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep2 \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'s1_v1', pg_temp.fp(:'s1_v1')) ->> 'secret_id' as s1 \gset
select public.secrets__create(:'org', 'anthropic-2', 'anthropic', :'s2_old', pg_temp.fp(:'s2_old')) ->> 'secret_id' as s2 \gset
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'s1') is not null as b \gset
select public.deployment_secrets__bind(:'dep2', 'ANTHROPIC_API_KEY', :'s1') is not null as b \gset
update public.deployments set status = 'provisioning' where id in (:'dep', :'dep2');
update public.deployments set status = 'ready' where id in (:'dep', :'dep2');
create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
set local role cortex_orchestrator;
-- S2 moves on to version 2 (its version 1 is replaced, not retired)
select (public.secrets__add_version(:'s2', :'s2_new', pg_temp.fp(:'s2_new')) ->> 'version') as v \gset
-- a running rotation of S1 lets the deployment be pinned to S1's old version 1 (allowed)
select public.secret_rotations__start(gen_random_uuid(), :'s1', :'s1_v2', pg_temp.fp(:'s1_v2'), 3600) ->> 'id' as rot \gset
select public.deployment_secrets__set_version(:'dep', :'s1', 1, 'r7') ->> 'status' as pinned \gset
-- the env var re-bound to S2
reset role;
update log_mark set id = (select coalesce(max(l.id), 0) from public.secret_access_log l);
set local role cortex_orchestrator;
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'s2', 'r7', 'r7-f1') is not null as b \gset
select public.deployment_secrets__read(:'dep', null, 'r7', 'r7-f1',
  p_intent_id => pg_temp.read_intent(:'dep', null)) as r_f1 \gset
reset role;
select is(:'pinned'::text, 'ok'::text, 'set-up: the deployment was pinned to S1 version 1 during S1''s rotation');
select is((select version from public.deployment_secrets where deployment_id = :'dep' and env_var = 'ANTHROPIC_API_KEY'),
  null::integer, 'R7 FINDING 1: re-binding the env var to another secret drops the old secret''s pin');
select ok((:'r_f1'::jsonb)::text not like '%' || :'s2_old' || '%',
  'R7 FINDING 1: the provisioning read never returns S2''s replaced version 1 through a pin carried over from S1');
select is(public.secret_versions__allowed(:'dep', :'s2', 1), false,
  'R7 FINDING 1: S2''s replaced version 1 is not a version this deployment may read or be pinned to');
select is((select l.version from public.secret_access_log l
           where l.id > (select id from log_mark) and l.operation = 'bind' and l.secret_id = :'s2'), 2,
  'R7 FINDING 1: the bind audit row names the version the binding now reads (S2''s current, 2)');
select is(((:'r_f1'::jsonb) #>> '{secrets,0,version}')::integer, 2, 'and the read returns S2''s version 2');
-- re-bound to the SAME secret, a pin stays (a rollback's pin is not undone by a repeated bind)
set local role cortex_orchestrator;
select public.secret_rotations__start(gen_random_uuid(), :'s2', 'canary-r7-s2-v3-' || md5(random()::text), pg_temp.fp('s2v3'), 3600)
  ->> 'id' as rot2 \gset
select public.deployment_secrets__set_version(:'dep', :'s2', 2, 'r7') ->> 'status' as pinned2 \gset
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'s2', 'r7', 'r7-f1b') is not null as b \gset
reset role;
select is((select version from public.deployment_secrets where deployment_id = :'dep' and env_var = 'ANTHROPIC_API_KEY'),
  2, 're-binding an env var to the same secret keeps its pin');

-- ---- privileges and shape ---------------------------------------------------------------------------
select ok(not has_function_privilege(r, f, 'execute'), r || ' may not call ' || f)
from unnest(array['anon', 'authenticated', 'service_role']) r,
  unnest(array['public.secret_revocations__get(uuid)', 'public.secret_revocations__finish(uuid, boolean, jsonb)',
    'public.secret_revocations__list_open(integer)', 'public.secrets__revoke(uuid, uuid, text, text, inet, text)',
    'public.deployment_secrets__revoke(uuid, uuid, uuid, text, text, inet, text)']) f;
select ok(has_function_privilege('cortex_orchestrator', f, 'execute'), 'cortex_orchestrator may call ' || f)
from unnest(array['public.secret_revocations__get(uuid)', 'public.secret_revocations__finish(uuid, boolean, jsonb)',
    'public.secret_revocations__list_open(integer)', 'public.secrets__revoke(uuid, uuid, text, text, inet, text)',
    'public.deployment_secrets__revoke(uuid, uuid, uuid, text, text, inet, text)',
    'public.secrets__request_revoke(uuid, uuid, uuid, text, text, inet, text)',
    'public.deployment_secrets__bind(uuid, text, uuid, text, text, inet, text)',
    'public.secret_rotations__start(uuid, uuid, text, text, integer, boolean, text, text, inet, text, uuid)']) f;
select ok(not has_function_privilege('cortex_orchestrator', f, 'execute'), 'nobody calls the internal ' || f)
from unnest(array['public.secret_revocations__json(uuid)', 'public.secret_revocations__check_open(uuid, uuid, uuid)']) f;
select is((select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.proname in ('secrets__revoke', 'deployment_secrets__revoke')),
  array['deployment_secrets__revoke(uuid,uuid,uuid,text,text,inet,text)', 'secrets__revoke(uuid,uuid,text,text,inet,text)'],
  'the revokes without a revocation are gone (no overload left to call)');
select is((select array_agg(p.proname::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and (p.proname like 'secret_revocations\_\_%' or p.proname in
     ('secrets__revoke', 'deployment_secrets__revoke', 'secrets__request_revoke'))
     and (not p.prosecdef or not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false))),
  null, 'every revocation function is security definer with search_path = pg_catalog, pg_temp');
select ok((select relrowsecurity from pg_class where oid = 'public.secret_revocations'::regclass),
  'row-level security is on for secret_revocations');
select ok(not has_table_privilege('cortex_orchestrator', 'public.secret_revocations',
  'select, insert, update, delete, truncate, references, trigger'), 'cortex_orchestrator holds no privilege on it');

-- ---- a request opens a revocation ----------------------------------------------------------------------
select 'canary-revoc-s3-' || md5(random()::text) as s3_v \gset
select public.secrets__create(:'org', 'openai', 'openai', :'s3_v', pg_temp.fp(:'s3_v')) ->> 'secret_id' as s3 \gset
select public.deployment_secrets__bind(:'dep', 'OPENAI_API_KEY', :'s3') is not null as b \gset
select public.deployment_secrets__bind(:'dep2', 'OPENAI_API_KEY', :'s3') is not null as b \gset
set local role cortex_orchestrator;
select public.secrets__request_revoke(:'s3', null, null, 'token:t') as req \gset
select public.secrets__request_revoke(:'s3', null, null, 'cortexctl') as req_again \gset
select public.secrets__request_revoke(:'s3', :'dep', null, 'token:t') as req_dep \gset
reset role;
select (:'req'::jsonb) ->> 'revocation_id' as rev \gset
select (:'req_dep'::jsonb) ->> 'revocation_id' as rev_dep \gset
select is((select state || ' ' || job_id || ' ' || (deployment_id is null)::text from public.secret_revocations where id = :'rev'),
  'open revoke-' || :'rev' || ' true', 'a whole-secret request opens a revocation; its job is revoke-<revocation id>');
select is(((:'req'::jsonb) ->> 'job_id'), 'revoke-' || :'rev', 'and the request returns its id and job');
select is(((:'req_again'::jsonb) ->> 'revocation_id') || ' ' || ((:'req_again'::jsonb) ->> 'existing'), :'rev' || ' true',
  'a repeated request while it is open: the same revocation');
select isnt(:'rev_dep'::text, :'rev'::text, 'a request for one deployment is a revocation of its own');
select is((select count(*) from public.secret_access_log l where l.operation = 'request' and l.secret_id = :'s3'), 3::bigint,
  'each request is audited');

-- ---- the revokes refuse anything but an open revocation of that secret (R7 finding 3) --------------------
set local role cortex_orchestrator;
select throws_ok(format('select public.secrets__revoke(%L, %L)', :'s3', gen_random_uuid()), '22023', null,
  'secrets__revoke naming no revocation (a forged job''s id): refused');
select throws_ok(format('select public.secrets__revoke(%L, null)', :'s3'), '22023', 'revocation_id: is required',
  'secrets__revoke without a revocation: refused, naming the field');
select throws_ok(format('select public.secrets__revoke(%L, %L)', :'s1', :'rev'), '22023', null,
  'another secret''s revocation: refused');
select throws_ok(format('select public.secrets__revoke(%L, %L)', :'s3', :'rev_dep'), '22023', null,
  'a one-deployment revocation cannot delete the whole secret');
select throws_ok(format('select public.deployment_secrets__revoke(%L, %L, %L)', :'s3', :'rev_dep', :'dep2'), '22023', null,
  'a one-deployment revocation cannot unbind another deployment');
select throws_ok(format('select public.deployment_secrets__revoke(%L, %L)', :'s3', :'rev_dep'), '22023', null,
  'nor every deployment');
select throws_ok(format('select public.deployment_secrets__revoke(%L, %L, %L)', :'s3', gen_random_uuid(), :'dep'), '22023', null,
  'deployment_secrets__revoke naming no revocation: refused');
reset role;
select is((select count(*) from public.deployment_secrets where secret_id = :'s3'), 2::bigint, 'nothing was unbound');
select is((select count(*) from vault.secrets v join public.secret_versions sv on sv.vault_secret_id = v.id where sv.secret_id = :'s3'),
  1::bigint, 'nothing left the vault');
select throws_like(format('select public.secrets__revoke(%L, %L)', :'s3', gen_random_uuid()),
  'revocation_id: % is not an open revocation of secret %; a revoke must be requested first%',
  'the refusal names the field and says what is missing');

-- ---- a whole-secret revocation open: no new binding, no rotation (R7 finding 4) -------------------------
select public.deployments__create(:'org', 'R7 F4', 'r7f4-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep4 \gset
set local role cortex_orchestrator;
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep4', 'OPENAI_API_KEY', :'s3'), '22023',
  format('secret_id: secret %s is being revoked (revocation %s); bind another secret', :'s3', :'rev'),
  'a secret being revoked takes no new binding');
select throws_ok(format('select public.secret_rotations__start(%L, %L, %L, %L, 0)', gen_random_uuid(), :'s3',
  'canary-revoc-s3-new-' || md5(random()::text), pg_temp.fp('s3new')), '22023',
  format('secret_id: secret %s is being revoked (revocation %s); it cannot be rotated', :'s3', :'rev'),
  'nor a rotation');
-- a one-deployment revocation blocks neither
select lives_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep4', 'ANTHROPIC_API_KEY', :'s1'),
  'control: another secret binds');

-- ---- under the right revocation --------------------------------------------------------------------
select is(public.deployment_secrets__revoke(:'s3', :'rev_dep', :'dep', 'orchestrator', 'revoke-' || :'rev_dep') ->> 'bindings_removed',
  '1', 'the one-deployment revocation unbinds its deployment');
select is(public.deployment_secrets__revoke(:'s3', :'rev', :'dep2', 'orchestrator', 'revoke-' || :'rev') ->> 'bindings_removed',
  '1', 'the whole-secret revocation unbinds any one deployment of the secret');

-- ---- finish, and the sweep's list (R7 finding 5) ---------------------------------------------------------
select public.secret_revocations__finish(:'rev', false, '{"vault_deleted": false, "failed": [{"deploymentId": "x", "reason": "provisioning"}]}')
  as fin_open \gset
select is(((:'fin_open'::jsonb) ->> 'state') || ' ' || ((:'fin_open'::jsonb) ->> 'attempts'), 'open 1',
  'a run that could not finish leaves it open, counted');
select is((:'fin_open'::jsonb) #>> '{result,vault_deleted}', 'false', 'with its result noted');
select ok(not public.secret_revocations__list_open(0) ? :'rev', 'one a run just ended is not listed (yet)');
reset role;
-- (one transaction: now() does not move; its last run ended an hour ago)
update public.secret_revocations set updated_at = now() - interval '1 hour' where id = :'rev';
set local role cortex_orchestrator;
select ok(public.secret_revocations__list_open(60) ? :'rev', 'an open revocation idle longer than the period is listed for the sweep');
select ok(not public.secret_revocations__list_open(7200) ? :'rev', 'not before');
select throws_ok('select public.secret_revocations__list_open(-1)', '22023', 'idle_seconds: must be between 0 and 2592000',
  'a bad idle period is refused');
select throws_ok(format('select public.secret_revocations__finish(%L, true, %L)', :'rev', '[1]'), '22023',
  'result: must be a JSON object of at most 16384 bytes', 'a result that is not an object is refused');
select throws_ok(format('select public.secret_revocations__finish(%L, true)', gen_random_uuid()), 'P0002', null,
  'finishing a revocation nobody opened: not found');
select throws_ok(format('select public.secret_revocations__get(%L)', gen_random_uuid()), 'P0002', null,
  'reading one nobody opened: not found (a forged job fails for good)');
select is(public.secrets__revoke(:'s3', :'rev', 'orchestrator', 'revoke-' || :'rev') ->> 'vault_secrets_deleted', '1',
  'the whole-secret revocation deletes the secret from the vault');
select is(public.secret_revocations__finish(:'rev', true, '{"vault_deleted": true}') ->> 'state', 'done', 'and is done');
select is(public.secret_revocations__finish(:'rev', false) ->> 'state', 'done', 'a late run does not reopen it');
select ok(not public.secret_revocations__list_open(0) ? :'rev' and not public.secret_revocations__list_open(60) ? :'rev',
  'a done revocation is not listed');
select throws_ok(format('select public.secrets__revoke(%L, %L)', :'s3', :'rev'), '22023', null,
  'and a done revocation revokes nothing more');
reset role;
select is((select finished_at is not null from public.secret_revocations where id = :'rev'), true, 'its end is recorded');
select is(public.secret_access_log__verify(:'org') ->> 'ok', 'true', 'the org''s chain verifies');

select * from finish();
rollback;
