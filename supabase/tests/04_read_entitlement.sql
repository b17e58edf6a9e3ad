-- deployment_secrets__read, the one place a value is read (DESIGN invariants 2 and 6): a
-- deployment reads only secrets bound to it, of its own org, active; every read and every denial
-- leaves an audit row in the same transaction; a denial does not raise, so its row survives, and
-- returns no value at all.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
-- pgTAP lives in `extensions`; the orchestrator's role needs it only to run the assertions here
grant usage on schema extensions to cortex_orchestrator;
select plan(42);
\ir support/read_intent.psql

select public.organizations__create('Test Org Read A') ->> 'id' as org_a \gset
select public.organizations__create('Test Org Read B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'A1', 'test-read-a1') ->> 'id' as dep_a1 \gset
select public.deployments__create(:'org_a', 'A2', 'test-read-a2') ->> 'id' as dep_a2 \gset
select public.deployments__create(:'org_b', 'B1', 'test-read-b1') ->> 'id' as dep_b1 \gset

select public.secrets__create(:'org_a', 'anthropic', 'anthropic', 'canary-read-org-wide-a-0001', repeat('ab', 32)) ->> 'secret_id' as s_a \gset
select public.secrets__create(:'org_a', 'openai', 'openai', 'canary-read-scoped-a1-0002', repeat('ab', 32), :'dep_a1') ->> 'secret_id' as s_a1 \gset
select public.secrets__create(:'org_a', 'unbound', 'other', 'canary-read-unbound-a-0003', repeat('ab', 32)) ->> 'secret_id' as s_unbound \gset
select public.secrets__create(:'org_a', 'a2', 'other', 'canary-read-scoped-a2-0004', repeat('ab', 32), :'dep_a2') ->> 'secret_id' as s_a2 \gset
select public.secrets__create(:'org_b', 'anthropic', 'anthropic', 'canary-read-org-b-0005', repeat('ab', 32)) ->> 'secret_id' as s_b \gset
select public.deployment_secrets__bind(:'dep_a1', 'ANTHROPIC_API_KEY', :'s_a') is not null as bound \gset
select public.deployment_secrets__bind(:'dep_a1', 'OPENAI_API_KEY', :'s_a1') is not null as bound \gset
select public.deployment_secrets__bind(:'dep_a2', 'A2_KEY', :'s_a2') is not null as bound \gset
select public.deployment_secrets__bind(:'dep_b1', 'ANTHROPIC_API_KEY', :'s_b') is not null as bound \gset

-- audit rows written since the last mark
create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
create function pg_temp.new_log(p_operation text, p_outcome text)
returns setof public.secret_access_log language sql as $$
  select * from public.secret_access_log l
  where l.id > (select id from log_mark) and l.operation = p_operation and l.outcome = p_outcome order by l.id
$$;
create function pg_temp.mark() returns boolean language sql as $$
  update log_mark set id = (select coalesce(max(id), 0) from public.secret_access_log) returning true
$$;
grant select on log_mark to cortex_orchestrator;
grant execute on function pg_temp.new_log(text, text) to cortex_orchestrator;

-- ---- a successful read ------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_a1', null, 'worker-1', 'provision-abc', '198.51.100.7', 'cortex-worker', p_intent_id => pg_temp.read_intent(:'dep_a1', null))
  as result \gset
reset role;
select is((:'result'::jsonb) ->> 'status', 'ok', 'cortex_orchestrator reads the secrets bound to its deployment');
select is((:'result'::jsonb) -> 'secrets',
  jsonb_build_array(
    jsonb_build_object('env_var', 'ANTHROPIC_API_KEY', 'secret_id', :'s_a', 'version', 1, 'value', 'canary-read-org-wide-a-0001'),
    jsonb_build_object('env_var', 'OPENAI_API_KEY', 'secret_id', :'s_a1', 'version', 1, 'value', 'canary-read-scoped-a1-0002')),
  'all bound secrets come back with env var, secret id, version and value');
select is((select count(*) from pg_temp.new_log('read', 'success')), 2::bigint, 'one read/success audit row per secret read');
select is((select count(*) from pg_temp.new_log('read', 'success') l
           where l.org_id = :'org_a' and l.deployment_id = :'dep_a1' and l.secret_id in (:'s_a', :'s_a1')
             and l.version = 1 and l.actor = 'worker-1' and l.job_id = 'provision-abc'
             and l.request_ip = '198.51.100.7' and l.user_agent = 'cortex-worker'),
  2::bigint, 'the read rows name org, deployment, secret, version and the audit context');
select is((select count(*) from public.secret_access_log l where l::text like '%canary-read%'), 0::bigint,
  'no audit row holds a value');

select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read(:'dep_a1', array[:'s_a1']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_a1']::uuid[])) -> 'secrets' -> 0 ->> 'value',
  'canary-read-scoped-a1-0002', 'a read can ask for some of the bound secrets');
select is((select array_agg(secret_id) from pg_temp.new_log('read', 'success')), array[:'s_a1']::uuid[],
  'and only those are audited');

select public.secrets__add_version(:'s_a', 'canary-read-org-wide-a-0006', repeat('ab', 32)) is not null as rotated \gset
select is(public.deployment_secrets__read(:'dep_a1', array[:'s_a']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_a']::uuid[])) -> 'secrets' -> 0,
  jsonb_build_object('env_var', 'ANTHROPIC_API_KEY', 'secret_id', :'s_a', 'version', 2, 'value', 'canary-read-org-wide-a-0006'),
  'a read returns the current version');

-- ---- denials: no value, one audit row each, no exception ----------------------------------------
select pg_temp.mark() as marked \gset
select lives_ok(format('select public.deployment_secrets__read(%L, array[%L]::uuid[])', :'dep_a1', :'s_b'),
  'reading another org''s secret does not raise');
select is((select count(*) from pg_temp.new_log('read', 'denied') l
           where l.org_id = :'org_a' and l.deployment_id = :'dep_a1' and l.secret_id is null
             and l.reason = 'secret belongs to another organization'),
  1::bigint, 'it is audited as read/denied in the requester''s chain, and the row outlived the call (a raise would have rolled it back)');
select is((select count(*) from pg_temp.new_log('read', 'denied') l where l.org_id = :'org_a' and l::text like '%' || :'s_b' || '%'),
  0::bigint, 'the requester''s chain does not name the other org''s secret');
select is((select array_agg(array[l.secret_id::text, coalesce(l.deployment_id::text, '-'), l.reason]) from pg_temp.new_log('read', 'denied') l
           where l.org_id = :'org_b'),
  array[array[:'s_b', '-', 'read refused: asked for by a deployment of another organization']],
  'the owner''s chain records the refusal of its secret, naming nothing of the requester''s');
select is(public.secret_access_log__verify(:'org_b') ->> 'ok', 'true', 'and the owner''s chain verifies');
select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read(:'dep_a1', array[:'s_b']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_b']::uuid[])),
  jsonb_build_object('status', 'denied', 'reason', format('secret %s belongs to another organization', :'s_b')),
  'the answer is a denial naming the reason, without a secrets key');

select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read(:'dep_a1', array[:'s_unbound']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_unbound']::uuid[])),
  jsonb_build_object('status', 'denied', 'reason', format('secret %s is not bound to this deployment', :'s_unbound')),
  'an unbound secret of the same org is denied');
select is((select count(*) from pg_temp.new_log('read', 'denied') l where l.secret_id = :'s_unbound'
           and l.reason = 'secret is not bound to this deployment'), 1::bigint, 'and audited');

select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read(:'dep_a1', array[:'s_a2']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_a2']::uuid[])) ->> 'reason',
  format('secret %s is scoped to another deployment', :'s_a2'), 'a secret scoped to a sibling deployment is denied');
select is((select count(*) from pg_temp.new_log('read', 'denied') l where l.secret_id = :'s_a2'), 1::bigint, 'and audited');

select pg_temp.mark() as marked \gset
select public.deployment_secrets__read(:'dep_a1', array[:'s_a', :'s_b']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_a', :'s_b']::uuid[])) as mixed \gset
select is((:'mixed'::jsonb) ->> 'status', 'denied', 'one refused secret denies the whole read');
select ok(not ((:'mixed'::jsonb) ? 'secrets') and position('canary-read' in :'mixed') = 0,
  'and no value at all comes back, not even the entitled one');
select is((select count(*) from pg_temp.new_log('read', 'success')), 0::bigint, 'no read/success row is written');
select is((select count(*) from pg_temp.new_log('read', 'denied') l where l.org_id = :'org_a'), 1::bigint,
  'one read/denied row, for the refused secret (and one in its owner''s chain)');

select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read(:'dep_a1', array['00000000-0000-0000-0000-00000000dead']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array['00000000-0000-0000-0000-00000000dead']::uuid[])) ->> 'reason',
  'secret 00000000-0000-0000-0000-00000000dead not found', 'an unknown secret is denied');
select is((select count(*) from pg_temp.new_log('read', 'denied') l
           where l.secret_id = '00000000-0000-0000-0000-00000000dead'), 1::bigint, 'and audited');

select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read('00000000-0000-0000-0000-00000000beef', null, 'worker-9', p_intent_id => pg_temp.read_intent('00000000-0000-0000-0000-00000000beef', null)),
  '{"status": "denied", "reason": "deployment 00000000-0000-0000-0000-00000000beef not found"}'::jsonb,
  'an unknown deployment is denied');
select is((select count(*) from pg_temp.new_log('read', 'denied') l
           where l.org_id is null and l.chain_id = '00000000-0000-0000-0000-000000000000'
             and l.deployment_id = '00000000-0000-0000-0000-00000000beef' and l.actor = 'worker-9'
             and l.reason = 'deployment not found'),
  1::bigint, 'and audited without an org, in the nil-uuid chain, with the deployment id as given');

-- revocation removes the binding: the next read is denied
select public.secrets__revoke(:'s_a1', (public.secrets__request_revoke(:'s_a1', null, null, 'test') ->> 'revocation_id')::uuid)
  is not null as revoked \gset
select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read(:'dep_a1', array[:'s_a1']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_a1']::uuid[])) ->> 'reason',
  format('secret %s is revoked', :'s_a1'), 'a revoked secret is denied');
select is((select count(*) from pg_temp.new_log('read', 'denied') l where l.secret_id = :'s_a1'), 1::bigint, 'and audited');
select is(jsonb_array_length(public.deployment_secrets__read(:'dep_a1', p_intent_id => pg_temp.read_intent(:'dep_a1', null)) -> 'secrets'), 1,
  'reading all bound secrets no longer includes the revoked one');

-- a deployment on its way out reads nothing
select public.deployments__set_status(:'dep_a2', 'deprovisioning') is not null as status_set \gset
select pg_temp.mark() as marked \gset
select is(public.deployment_secrets__read(:'dep_a2', p_intent_id => pg_temp.read_intent(:'dep_a2', null)),
  jsonb_build_object('status', 'denied', 'reason', format('deployment %s is deprovisioning', :'dep_a2')),
  'a deprovisioning deployment is denied');
select is((select count(*) from pg_temp.new_log('read', 'denied') l where l.deployment_id = :'dep_a2' and l.org_id = :'org_a'),
  1::bigint, 'and audited in its org');
select public.secrets__delete_for_deployment(:'dep_a2') is not null as deleted \gset
select public.deployments__set_status(:'dep_a2', 'deleted') is not null as status_set \gset
select is(public.deployment_secrets__read(:'dep_a2', array[:'s_a2']::uuid[], p_intent_id => pg_temp.read_intent(:'dep_a2', array[:'s_a2']::uuid[])) ->> 'reason',
  format('deployment %s is deleted', :'dep_a2'), 'a deleted deployment is denied');

-- ---- a vault row that is gone or does not decrypt ------------------------------------------------
select public.secrets__create(:'org_b', 'broken', 'other', 'canary-read-broken-0007', repeat('ab', 32)) ->> 'secret_id' as s_broken \gset
select public.deployment_secrets__bind(:'dep_b1', 'BROKEN', :'s_broken') is not null as bound \gset
delete from vault.secrets where id = (select vault_secret_id from public.secret_versions where secret_id = :'s_broken');
select pg_temp.mark() as marked \gset
select public.deployment_secrets__read(:'dep_b1', p_intent_id => pg_temp.read_intent(:'dep_b1', null)) as broken \gset
select is((:'broken'::jsonb) - 'reason', '{"status": "error"}'::jsonb, 'a missing vault secret is an error, not a crash');
select ok(position('canary-read' in :'broken') = 0, 'and no value of the other bound secret comes back');
select is((select count(*) from pg_temp.new_log('read', 'error') l where l.secret_id = :'s_broken'), 1::bigint,
  'it is audited as read/error');
select is((select count(*) from pg_temp.new_log('read', 'success')), 0::bigint, 'and nothing as read/success');

-- ---- bad input is refused with a message naming the field ---------------------------------------
select throws_ok(format('select public.deployment_secrets__read(%L, array[null]::uuid[])', :'dep_a1'), '22023',
  'secret_ids: must not contain null', 'a null secret id is refused');
select throws_ok($$select public.deployment_secrets__read(null)$$, '22023', 'deployment_id: is required',
  'a null deployment id is refused');
select throws_ok(format('select public.deployment_secrets__read(%L, null, %L)', :'dep_a1', repeat('a', 201)), '22023',
  'actor: must be at most 200 characters', 'an over-long actor is refused');

-- ---- only cortex_orchestrator may read ----------------------------------------------------------
set local role service_role;
select throws_ok(format('select public.deployment_secrets__read(%L)', :'dep_a1'), '42501', null,
  'service_role cannot call deployment_secrets__read');
reset role;
set local role authenticated;
select throws_ok(format('select public.deployment_secrets__read(%L)', :'dep_a1'), '42501', null,
  'authenticated cannot call deployment_secrets__read');
reset role;
set local role anon;
select throws_ok(format('select public.deployment_secrets__read(%L)', :'dep_a1'), '42501', null,
  'anon cannot call deployment_secrets__read');
reset role;

select * from finish();
rollback;
