-- The pipeline's functions (migration *_pipeline.sql): a request creates the deployment and its
-- bindings in one call or nothing at all; a cross-org or unknown secret is a denial, audited in the
-- requester's chain and naming no secret id; the pinned host key is never replaced by the
-- provider's first-boot key after a re-key; a pending key is promoted only when it is the pending
-- one; step records belong to the current run; a final failure moves the deployment to failed
-- naming the step; a deprovision request wins; only the orchestrator's role may call any of it.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(46);

-- ---- privileges -----------------------------------------------------------------------------------
select is(
  (select array_agg(p.oid::regprocedure::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace
     and p.proname in ('deployments__request', 'deployments__describe', 'deployments__list', 'deployments__list_stalled',
       'deployments__unowned', 'deployments__begin', 'deployments__request_deprovision', 'deployment_steps__start',
       'deployment_steps__finish', 'deployments__record_host', 'deployments__record_dns', 'deployments__host_key')
     and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute')
          or has_function_privilege('service_role', p.oid, 'execute')
          or not has_function_privilege('cortex_orchestrator', p.oid, 'execute'))),
  null, 'every pipeline function is executable by cortex_orchestrator and by no API role');
select is(
  (select array_agg(p.proname::text order by 1) from pg_proc p
   where p.pronamespace = 'public'::regnamespace and p.prosecdef
     and (p.proname like 'deployments\_\_%' or p.proname like 'deployment\_steps\_\_%')
     and not (coalesce(p.proconfig, '{}') @> array['search_path=pg_catalog, pg_temp'])),
  null, 'every pipeline definer function pins search_path = pg_catalog, pg_temp');

-- ---- fixtures ---------------------------------------------------------------------------------------
select public.organizations__create('Pipeline Org A') ->> 'id' as org_a \gset
select public.organizations__create('Pipeline Org B') ->> 'id' as org_b \gset
select public.secrets__create(:'org_a', 'a key', 'anthropic', 'sk-ant-pipeline-a-' || md5(random()::text), repeat('ab', 32)) ->> 'secret_id' as sec_a \gset
select public.secrets__create(:'org_b', 'b key', 'anthropic', 'sk-ant-pipeline-b-' || md5(random()::text), repeat('ab', 32)) ->> 'secret_id' as sec_b \gset

-- ---- request -------------------------------------------------------------------------------------
select public.deployments__request(:'org_a', 'Agent P', 'tp-' || substr(md5(random()::text), 1, 8), 'local', null, null, 'echo',
  jsonb_build_array(jsonb_build_object('env_var', 'ANTHROPIC_API_KEY', 'secret_id', :'sec_a'))) as req \gset
select is((:'req'::jsonb) ->> 'status', 'ok', 'a request with a binding of its own organisation succeeds');
select (:'req'::jsonb) #>> '{deployment,id}' as dep \gset
select is((select status from public.deployments where id = :'dep'), 'requested', 'the deployment starts requested');
select is((select array_agg(env_var || '=' || secret_id) from public.deployment_secrets where deployment_id = :'dep'),
  array['ANTHROPIC_API_KEY=' || :'sec_a'], 'its binding is created in the same call');
select is((select count(*) from public.secret_access_log where deployment_id = :'dep' and operation = 'bind' and outcome = 'success'),
  1::bigint, 'the binding is audited');

-- the same bindings as JSON text (what the direct adapter sends) are accepted too
select is(public.deployments__request(:'org_a', 'Agent Q', 'tq-' || substr(md5(random()::text), 1, 8), 'local', null, null, 'echo',
  to_jsonb(jsonb_build_array(jsonb_build_object('env_var', 'K', 'secret_id', :'sec_a'))::text)) ->> 'status', 'ok',
  'bindings given as JSON text are parsed once');

select count(*) as deps_before from public.deployments \gset
select count(*) as audit_a_before from public.secret_access_log where org_id = :'org_a' \gset
select count(*) as audit_b_before from public.secret_access_log where org_id = :'org_b' \gset
select public.deployments__request(:'org_a', 'Agent X', 'tx-' || substr(md5(random()::text), 1, 8), 'local', null, null, 'echo',
  jsonb_build_array(jsonb_build_object('env_var', 'OK', 'secret_id', :'sec_a'),
                    jsonb_build_object('env_var', 'STOLEN', 'secret_id', :'sec_b'))) as denied \gset
select is((:'denied'::jsonb) - 'reason',
  jsonb_build_object('status', 'denied', 'field', 'bindings[1].secret_id'),
  'another organisation''s secret is a denial naming the binding');
select is((:'denied'::jsonb) ->> 'reason', 'no active secret with this id in the organization',
  'the denial says the same as for an unknown id (no confirmation that it exists elsewhere)');
select is((select count(*) from public.deployments), :'deps_before'::bigint, 'a denied request creates no deployment');
select is((select count(*) - :'audit_a_before' from public.secret_access_log where org_id = :'org_a'), 1::bigint,
  'the denial is audited once in the requesting organisation''s chain');
select is((select secret_id from public.secret_access_log where org_id = :'org_a' order by id desc limit 1), null::uuid,
  'the denial row names no secret id');
select is((select operation || '/' || outcome from public.secret_access_log where org_id = :'org_a' order by id desc limit 1),
  'bind/denied', 'as a denied bind');
select is((select count(*) - :'audit_b_before' from public.secret_access_log where org_id = :'org_b'), 1::bigint,
  'the owning organisation''s chain records the refusal too');
select is(
  (select jsonb_build_object('secret', secret_id, 'deployment', deployment_id, 'actor', actor, 'ip', request_ip,
     'reason', reason) from public.secret_access_log where org_id = :'org_b' order by id desc limit 1),
  jsonb_build_object('secret', :'sec_b', 'deployment', null, 'actor', null, 'ip', null,
    'reason', 'bind refused: another organization named this secret in a deployment request'),
  'naming its own secret and nothing of the requester');

select throws_ok(format($$select public.deployments__request(%L, 'n', 'tz-1', 'local', null, null, 'echo', '[{"env_var":"a","secret_id":"%s"}]')$$, :'org_a', :'sec_a'),
  '22023', 'bindings[0].env_var: must match ^[A-Z_][A-Z0-9_]*$ (at most 128 characters)', 'a bad variable name is refused naming the binding');
select throws_ok(format($$select public.deployments__request(%L, 'n', 'tz-2', 'local', null, null, 'echo', '[{"env_var":"A","secret_id":"%s"},{"env_var":"A","secret_id":"%s"}]')$$, :'org_a', :'sec_a', :'sec_a'),
  '22023', 'bindings[1].env_var: bound twice; each variable takes one secret', 'a variable bound twice is refused');
select throws_ok(format($$select public.deployments__request(%L, 'n', 'tz-3', 'local', null, null, 'echo', '[{"env_var":"A","secret_id":"%s","value":"x"}]')$$, :'org_a', :'sec_a'),
  '22023', 'bindings[0]: must be an object {env_var, secret_id} with string values', 'an unknown field in a binding is refused');
select throws_ok(format($$select public.deployments__request(%L, 'n', 'tz-4', 'local', null, null, 'python', '[]')$$, :'org_a'),
  '22023', 'runtime: must be echo or openclaw', 'an unknown runtime is refused');
select throws_ok(format($$select public.deployments__request(%L, 'n', 'www', 'local', null, null, 'echo', '[]')$$, :'org_a'),
  '22023', 'subdomain: is reserved for the platform; choose another', 'a platform name is refused as a subdomain');
select throws_ok(format($$select public.deployments__request(%L, 'n', 'xn--80ak6aa92e', 'local', null, null, 'echo', '[]')$$, :'org_a'),
  '22023', 'subdomain: must not be punycode (xn--)', 'a punycode subdomain is refused');
select throws_ok(format($$select public.deployments__request(%L, %L, 'tz-5', 'local', null, null, 'echo', '[]')$$, :'org_a', 'evil' || chr(8238) || 'txt.exe'),
  '22023', 'name: must not contain control or bidirectional formatting characters', 'a bidi override in a name is refused');

-- ---- begin, steps, failure, resume ---------------------------------------------------------------------
select is(public.deployments__begin(:'dep', 'provision') ->> 'run', '1', 'the first provision is run 1');
select is((select status from public.deployments where id = :'dep'), 'provisioning', 'and the deployment is provisioning');
select lives_ok(format($$select public.deployment_steps__start(%L, 1, 'host')$$, :'dep'), 'a step of the current run starts');
select throws_ok(format($$select public.deployment_steps__start(%L, 2, 'host')$$, :'dep'), '22023',
  format('run: deployment %s is in run 1, not 2', :'dep'), 'a step of another run is refused (a stale worker)');
select lives_ok(format($$select public.deployment_steps__finish(%L, 1, 'host', 'failed', 'timeout: step host did not finish', true)$$, :'dep'),
  'a final failure is recorded');
select is((select status || '/' || failed_step from public.deployments where id = :'dep'), 'failed/host',
  'a final failure leaves the deployment failed, naming the step');
select is(public.deployments__begin(:'dep', 'provision') ->> 'run', '1', 'a retry resumes the same run');
select lives_ok(format($$select public.deployment_steps__start(%L, 1, 'host')$$, :'dep'), 'the failed step starts again');
select is((select attempt from public.deployment_steps where deployment_id = :'dep' and run = 1 and step = 'host'), 2,
  'as its second attempt');

-- ---- host and its key -----------------------------------------------------------------------------
\set k1 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB'
\set k2 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIC'
\set k3 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMD'
select public.deployments__record_host(:'dep', 'cortex-x', '10.0.0.2', null, :'k1') is not null as recorded \gset
select public.deployments__host_key(:'dep', 'pending', :'k2') is not null as pend \gset
select throws_ok(format('select public.deployments__host_key(%L, %L, %L)', :'dep', 'promote', :'k3'), '22023',
  'key: is not the pending host key', 'only the pending key can be promoted');
select public.deployments__host_key(:'dep', 'promote', :'k2') is not null as prom \gset
select is((select host_public_key || '|' || coalesce(host_public_key_pending, '-') from public.deployments where id = :'dep'),
  :'k2' || '|-', 'promotion pins the new key and clears the pending one');
select public.deployments__record_host(:'dep', 'cortex-x', '10.0.0.2', null, :'k1') is not null as again \gset
select is((select host_public_key from public.deployments where id = :'dep'), :'k2',
  'recording the host again never puts the first-boot key back over the re-keyed pin');

-- ---- deprovision wins ------------------------------------------------------------------------------
select is(public.deployments__request_deprovision(:'dep') ->> 'status', 'deprovisioning',
  'a deprovision request moves a provisioning deployment to deprovisioning at once');
select is(public.deployments__begin(:'dep', 'provision') ->> 'action', 'stop', 'after which a provision stops');
select is(public.deployments__begin(:'dep', 'deprovision') ->> 'action', 'run', 'and the deprovision runs');
select is((select array_agg(x) from jsonb_array_elements_text(public.deployments__unowned(array[:'dep'::uuid, '00000000-0000-0000-0000-00000000beef'::uuid])) x),
  array['00000000-0000-0000-0000-00000000beef'], 'unowned: an id no live deployment has');

-- ---- fencing: a run another run took over writes nothing ---------------------------------------------
select public.deployments__request(:'org_a', 'Agent F', 'tf-' || substr(md5(random()::text), 1, 8), 'local', null, null, 'echo',
  '[]'::jsonb) #>> '{deployment,id}' as fdep \gset
select is(public.deployments__begin(:'fdep', 'provision', 'run-token-aaaa') ->> 'action', 'run', 'run A begins with its token');
select lives_ok(format($$select public.deployment_steps__start(%L, 1, 'host', 'run-token-aaaa')$$, :'fdep'),
  'run A records its step under its token');
-- run A's Redis lease vanished (a flush); run B took the job and began: B's token now holds the operation
select is(public.deployments__begin(:'fdep', 'provision', 'run-token-bbbb') ->> 'action', 'run', 'run B begins and takes over');
select throws_ok(format($$select public.deployment_steps__finish(%L, 1, 'host', 'succeeded', null, false, 'run-token-aaaa')$$, :'fdep'),
  '55006', format('token: another worker has taken over the operation on deployment %s', :'fdep'),
  'run A can no longer record a step');
select throws_ok(format($$select public.deployments__record_host(%L, 'cortex-a', '10.0.0.9', null, %L, 'run-token-aaaa')$$, :'fdep', :'k1'),
  '55006', format('token: another worker has taken over the operation on deployment %s', :'fdep'),
  'nor record a host (and pin its key)');
select is((select server_id from public.deployments where id = :'fdep'), null, 'nothing of run A''s landed');
select lives_ok(format($$select public.deployment_steps__start(%L, 1, 'host', 'run-token-bbbb')$$, :'fdep'),
  'run B writes under its own token');
select throws_ok(format($$select public.deployments__begin(%L, 'provision', 'bad token!')$$, :'fdep'),
  '22023', 'token: must be 8-100 letters, digits, "_" or "-"', 'a malformed token is refused');

select * from finish();
rollback;
