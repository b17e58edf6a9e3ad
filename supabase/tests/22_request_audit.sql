-- Accepted requests audited with who asked (20261201140000_request_audit.sql, issues 10 and 11): a
-- revoke request and a deprovision request each write one `request` row in the organisation's chain
-- naming the actor, address, user agent and job; another org's secret reads as absent and writes
-- nothing; an actor is required; the audit log refuses an unknown operation still; privileges.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(19);

select public.organizations__create('Request Org A') ->> 'id' as org_a \gset
select public.organizations__create('Request Org B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'QA1', 'req-a1-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_a1 \gset
select public.deployments__create(:'org_a', 'QA2', 'req-a2-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_a2 \gset
select public.secrets__create(:'org_a', 'anthropic', 'anthropic', 'canary-request-audit-value-0001', repeat('ab', 32)) ->> 'secret_id' as s_a \gset
select public.deployment_secrets__bind(:'dep_a1', 'ANTHROPIC_API_KEY', :'s_a') is not null as b \gset
create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
grant select on log_mark to cortex_orchestrator;

-- ---- privileges -------------------------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.secrets__request_revoke(uuid, uuid, uuid, text, text, inet, text)', 'execute')
  and not has_function_privilege(r, 'public.deployments__request_deprovision_audited(uuid, text, text, inet, text)', 'execute'),
  r || ' may not call the request functions') from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(has_function_privilege('cortex_orchestrator', 'public.secrets__request_revoke(uuid, uuid, uuid, text, text, inet, text)', 'execute')
  and has_function_privilege('cortex_orchestrator', 'public.deployments__request_deprovision_audited(uuid, text, text, inet, text)', 'execute'),
  'cortex_orchestrator may');

set local role cortex_orchestrator;
-- ---- revoke request -----------------------------------------------------------------------------
select throws_ok(format('select public.secrets__request_revoke(%L)', :'s_a'),
  '22023', 'actor: is required', 'a request names its actor');
select throws_ok(format('select public.secrets__request_revoke(%L, null, %L, %L)', :'s_a', :'org_b', 'token:t-b'),
  'P0002', format('secret %s not found', :'s_a'), 'another org''s token: the secret reads as absent');
select throws_ok(format('select public.secrets__request_revoke(%L, %L, null, %L)', :'s_a', :'dep_a2', 'token:t-a'),
  'P0002', format('secret %s is not bound to deployment %s', :'s_a', :'dep_a2'), 'a deployment the secret is not bound to: refused');
reset role;
select is((select count(*) from public.secret_access_log l where l.id > (select id from log_mark)), 0::bigint,
  'a refused request writes no row');

set local role cortex_orchestrator;
select lives_ok(format('select public.secrets__request_revoke(%L, null, %L, %L, %L, %L, %L)', :'s_a', :'org_a',
  'token:t-a', 'revoke-' || :'s_a', '192.0.2.7', 'curl/8 (pgtap)'), 'an accepted revoke request is audited');
select lives_ok(format('select public.secrets__request_revoke(%L, %L, null, %L, %L)', :'s_a', :'dep_a1',
  'cortexctl', 'revoke-' || :'s_a' || '-' || :'dep_a1'), 'a revoke from one deployment too (ops, no org)');
reset role;
select results_eq(
  format($$select org_id, secret_id, deployment_id, outcome, actor, job_id, host(request_ip), user_agent, reason
    from public.secret_access_log where id > (select id from log_mark) and operation = 'request' and secret_id = %L order by id$$, :'s_a'),
  format($$values (%L::uuid, %L::uuid, null::uuid, 'success'::text, 'token:t-a'::text, %L::text, '192.0.2.7'::text, 'curl/8 (pgtap)'::text,
      'revoke requested: every deployment and the vault'::text),
    (%L::uuid, %L::uuid, %L::uuid, 'success', 'cortexctl', %L, null, null, 'revoke requested: one deployment')$$,
    :'org_a', :'s_a', (select 'revoke-' || r.id from public.secret_revocations r where r.secret_id = :'s_a' and r.deployment_id is null),
    :'org_a', :'s_a', :'dep_a1', (select 'revoke-' || r.id from public.secret_revocations r where r.secret_id = :'s_a' and r.deployment_id = :'dep_a1')),
  'each row names the org, secret, token, address, user agent and job (its revocation''s: revoke-<revocation id>)');
select is((select count(*) from public.secret_access_log l where l.id > (select id from log_mark) and l.operation = 'revoke'),
  0::bigint, 'a request is not a revoke: nothing is revoked yet');
select is((select status from public.secrets where id = :'s_a'), 'active', 'and the secret is still active');

-- ---- deprovision request ------------------------------------------------------------------------
set local role cortex_orchestrator;
select throws_ok(format('select public.deployments__request_deprovision_audited(%L)', :'dep_a2'),
  '22023', 'actor: is required', 'a deprovision request names its actor');
select is(public.deployments__request_deprovision_audited(:'dep_a2', 'token:t-a', 'deprovision-' || :'dep_a2',
  '2001:db8::1', 'sdk/2') ->> 'status', 'deprovisioning', 'the deployment is marked for deprovisioning');
reset role;
update public.deployments set status = 'deleted' where id = :'dep_a2';
set local role cortex_orchestrator;
select is(public.deployments__request_deprovision_audited(:'dep_a2', 'token:t-a', 'deprovision-' || :'dep_a2') ->> 'status',
  'deleted', 'a deleted deployment stays deleted');
reset role;
select results_eq(
  format($$select org_id, secret_id, outcome, actor, job_id, host(request_ip), user_agent, reason
    from public.secret_access_log where id > (select id from log_mark) and operation = 'request' and deployment_id = %L order by id$$, :'dep_a2'),
  format($$values (%L::uuid, null::uuid, 'success'::text, 'token:t-a'::text, %L::text, '2001:db8::1'::text, 'sdk/2'::text, 'deprovision requested'::text),
    (%L::uuid, null::uuid, 'success', 'token:t-a', null, null, null, 'deprovision requested: already deleted')$$,
    :'org_a', 'deprovision-' || :'dep_a2', :'org_a'),
  'the deprovision request names the token, address, user agent and job; a deleted one queues no job');

select is(public.secret_access_log__verify(:'org_a') ->> 'ok', 'true', 'the org''s chain verifies with the request rows');
select throws_ok($$insert into public.secret_access_log (id, operation, outcome, seq, prev_hash, hash)
  overriding system value values (0, 'bogus', 'success', 0, '', '')$$,
  '23514', null, 'the audit log still refuses an unknown operation');

select * from finish();
rollback;
