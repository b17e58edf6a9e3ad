-- Rotation's part of the contract (20261201120000_rotation.sql, issue 11): the rotation record,
-- reads of a given version (only versions the deployment runs or is rotating between; another
-- org's refused and audited in both chains), the binding moved back for a rollback, `rotating`
-- while a deployment is switched, retirement only of versions nobody uses, revoke, the max-age
-- policy, the leak report; no plaintext anywhere but in a read's result; privileges.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(62);
\ir support/read_intent.psql
-- the caller's keyed fingerprint (the orchestrator's HMAC; any key will do here)
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

select public.organizations__create('Rotation Org A') ->> 'id' as org_a \gset
select public.organizations__create('Rotation Org B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'RA1', 'rot-a1-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_a1 \gset
select public.deployments__create(:'org_a', 'RA2', 'rot-a2-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_a2 \gset
select public.deployments__create(:'org_a', 'RA3', 'rot-a3-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_a3 \gset
select public.deployments__create(:'org_b', 'RB1', 'rot-b1-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_b1 \gset
select public.secrets__create(:'org_a', 'anthropic', 'anthropic', 'canary-rotation-old-value-0001', repeat('ab', 32)) ->> 'secret_id' as s_a \gset
select public.secrets__create(:'org_b', 'anthropic', 'anthropic', 'canary-rotation-org-b-value-0003', repeat('ab', 32)) ->> 'secret_id' as s_b \gset
select public.deployment_secrets__bind(:'dep_a1', 'ANTHROPIC_API_KEY', :'s_a') is not null as b \gset
select public.deployment_secrets__bind(:'dep_a2', 'ANTHROPIC_API_KEY', :'s_a') is not null as b \gset
select public.deployment_secrets__bind(:'dep_a3', 'ANTHROPIC_API_KEY', :'s_a') is not null as b \gset
select public.deployment_secrets__bind(:'dep_b1', 'ANTHROPIC_API_KEY', :'s_b') is not null as b \gset
update public.deployments set status = 'provisioning' where id in (:'dep_a1', :'dep_a2', :'dep_a3');
update public.deployments set status = 'ready' where id in (:'dep_a1', :'dep_a2', :'dep_a3');
-- a deployment being removed is not part of a rotation
update public.deployments set status = 'deprovisioning' where id = :'dep_a3';
select gen_random_uuid() as rot \gset

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
create function pg_temp.new_log(p_operation text, p_outcome text)
returns setof public.secret_access_log language sql as $$
  select * from public.secret_access_log l
  where l.id > (select id from log_mark) and l.operation = p_operation and l.outcome = p_outcome order by l.id
$$;

-- ---- privileges -------------------------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.secret_rotations__start(uuid, uuid, text, text, integer, boolean, text, text, inet, text, uuid)', 'execute'),
  r || ' may not start a rotation') from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(not has_function_privilege(r, 'public.deployment_secrets__read_versions(uuid, uuid[], integer[], text, text, inet, text, uuid)', 'execute'),
  r || ' may not read a version') from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(not has_table_privilege('cortex_orchestrator', 'public.secret_rotations', 'select')
  and not has_table_privilege('cortex_orchestrator', 'public.secret_rotation_deployments', 'insert'),
  'cortex_orchestrator holds no privilege on the rotation tables: functions are the only way in');
select ok(not has_function_privilege('cortex_orchestrator', 'public.secret_versions__users(uuid, integer)', 'execute')
  and not has_function_privilege('cortex_orchestrator', 'public.deployment_secrets__move(uuid, uuid, integer, text, text, text, inet, text)', 'execute'),
  'the internal helpers are nobody''s to call');

-- ---- bad input --------------------------------------------------------------------------------
set local role cortex_orchestrator;
select throws_ok(format('select public.secret_rotations__start(%L, %L, %L, %L, -1)', :'rot', :'s_a', 'canary-rotation-new-value-0002', pg_temp.fp('x')),
  '22023', 'grace_seconds: must be between 0 and 2592000', 'a negative grace period is refused, naming the field');
select throws_ok(format('select public.secret_rotations__start(%L, %L, %L, %L, 60)', :'rot', :'s_a', 'short', pg_temp.fp('short')),
  '22023', null, 'a value too short is refused');
select throws_ok(format('select public.deployment_secrets__read_versions(%L, array[%L]::uuid[], array[1, 2])', :'dep_a1', :'s_a'),
  '22023', 'versions: must hold one version per secret id', 'versions and ids must pair up');
select throws_ok(format('select public.secrets__set_max_age(%L, 60)', :'s_a'), '22023', null,
  'a max age under an hour is refused');

-- ---- start -------------------------------------------------------------------------------------
select public.secret_rotations__start(:'rot', :'s_a', 'canary-rotation-new-value-0002', pg_temp.fp('canary-rotation-new-value-0002'), 3600, false,
  'api-token-1', 'rotate-' || :'rot') as started \gset
reset role;
select is((:'started'::jsonb) ->> 'to_version', '2', 'the new value is version 2');
select is((select current_version from public.secrets where id = :'s_a'), 2, 'and the current version');
select is((select array_agg(deployment_id::text || '/' || from_version || '/' || state order by deployment_id::text)
           from public.secret_rotation_deployments where rotation_id = :'rot'),
  (select array_agg(x order by x) from unnest(array[:'dep_a1' || '/1/pending', :'dep_a2' || '/1/pending']) x),
  'every bound deployment not being removed gets a pending row naming the version it runs');
select is((select count(*) from pg_temp.new_log('rotate', 'success') l where l.job_id = 'rotate-' || :'rot' and l.actor = 'api-token-1'),
  2::bigint, 'the new version and the rotation''s start are audited with actor and job id');
set local role cortex_orchestrator;
select throws_ok(format('select public.secret_rotations__start(gen_random_uuid(), %L, %L, %L, 60)', :'s_a', 'canary-rotation-third-value-0009', pg_temp.fp('canary-rotation-third-value-0009')),
  '23505', null, 'a second rotation of the secret while one runs is refused');
select throws_ok(format('select public.secret_rotations__start(gen_random_uuid(), %L, %L, %L, 60, p_org_id => %L)', :'s_a', 'canary-rotation-third-value-0009', pg_temp.fp('canary-rotation-third-value-0009'), :'org_b'),
  'P0002', null, 'a caller scoped to another organization finds no such secret');
select is(public.secret_rotations__start(:'rot', :'s_a', 'canary-rotation-new-value-0002', pg_temp.fp('canary-rotation-new-value-0002'), 3600) ->> 'existing', 'true',
  'the same rotation id again (a retried request) returns the rotation');
select throws_ok(format('select public.secret_rotations__start(%L, %L, %L, %L, 3600)', :'rot', :'s_a', 'canary-rotation-other-value-0008', pg_temp.fp('canary-rotation-other-value-0008')),
  '23505', 'rotation_id: already used for another value (an Idempotency-Key reused for a different request)',
  'the same rotation id with another value is refused');
reset role;
select is((select count(*) from public.secret_versions where secret_id = :'s_a'), 2::bigint, 'and adds no version');

-- ---- version reads -----------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.deployment_secrets__read_versions(:'dep_a1', array[:'s_a']::uuid[], array[2], 'worker', 'rotate-' || :'rot',
  p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_a']::uuid[])) as r_new \gset
select public.deployment_secrets__read_versions(:'dep_a2', array[:'s_a']::uuid[], array[1], 'worker', 'rotate-' || :'rot',
  p_intent_id => pg_temp.read_intent(:'dep_a2', array[:'s_a']::uuid[])) as r_old \gset
reset role;
select is((:'r_new'::jsonb) #>> '{secrets,0,value}', 'canary-rotation-new-value-0002', 'a deployment reads the version it rotates to');
select is((:'r_old'::jsonb) #>> '{secrets,0,value}', 'canary-rotation-old-value-0001', 'and the version it runs');
select is((select count(*) from pg_temp.new_log('read', 'success') l
           where l.secret_id = :'s_a' and l.job_id = 'rotate-' || :'rot' and l.version in (1, 2)),
  2::bigint, 'each version read is audited with its version and job id');
set local role cortex_orchestrator;
select is(public.deployment_secrets__read_versions(:'dep_a1', array[:'s_a']::uuid[], array[2], 'worker') ->> 'status',
  'denied', 'without a committed intent, no value');
select public.deployment_secrets__read_versions(:'dep_b1', array[:'s_a']::uuid[], array[1], 'attacker', 'rotate-x',
  p_intent_id => pg_temp.read_intent(:'dep_b1', array[:'s_a']::uuid[])) as r_cross \gset
reset role;
select is((:'r_cross'::jsonb) ->> 'status', 'denied', 'another organization''s version read is refused');
select ok((:'r_cross'::jsonb)::text not like '%canary%', 'and holds no value');
select is((select count(*) from pg_temp.new_log('read', 'denied') l
           where l.org_id = :'org_b' and l.deployment_id = :'dep_b1' and l.secret_id is null and l.actor = 'attacker'),
  1::bigint, 'audited in the requester''s chain without naming the other org''s secret');
select is((select count(*) from pg_temp.new_log('read', 'denied') l
           where l.org_id = :'org_a' and l.deployment_id is null and l.secret_id = :'s_a' and l.version = 1),
  1::bigint, 'and in the owner''s chain, naming nothing of the requester''s');

-- ---- switch, rollback --------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.secret_rotation_deployments__set_state(:'rot', :'dep_a1', 'switching', null, null, 'worker', 'rotate-' || :'rot') is not null as x \gset
reset role;
select is((select status from public.deployments where id = :'dep_a1'), 'rotating', 'a deployment being switched is rotating');
set local role cortex_orchestrator;
select throws_ok(format('select public.secret_rotation_deployments__set_state(%L, %L, %L)', :'rot', :'dep_a1', 'bogus'),
  '22023', 'state: must be one of switching, switched, rolled_back, failed, skipped', 'an unknown state is refused');
select throws_ok(format('select public.secret_rotation_deployments__set_state(%L, %L, %L)', :'rot', :'dep_a2', 'switched'),
  '22023', 'state: cannot change from pending to switched', 'a deployment is never recorded switched without switching');
select throws_ok(format('select public.secret_rotations__finish(%L)', :'rot'), '22023', null,
  'a rotation with deployments still pending cannot finish');
select public.secret_rotation_deployments__set_state(:'rot', :'dep_a1', 'switched', null, 'held-restart', 'worker', 'rotate-' || :'rot') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_a2', 'switching', null, null, 'worker', 'rotate-' || :'rot') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_a2', 'rolled_back', 'not healthy', 'held-restart', 'worker', 'rotate-' || :'rot') is not null as x \gset
reset role;
select is((select status from public.deployments where id = :'dep_a1') || '/' || (select status from public.deployments where id = :'dep_a2'),
  'ready/ready', 'both are ready again afterwards');
select is((select version from public.deployment_secrets where deployment_id = :'dep_a1'), null::integer,
  'the switched deployment follows the current version');
select is((select version from public.deployment_secrets where deployment_id = :'dep_a2'), 1,
  'the rolled-back deployment is pinned to its old version');
select is((select count(*) from pg_temp.new_log('bind', 'success') l
           where l.deployment_id = :'dep_a2' and l.version = 1 and l.reason like '%rolled back (not healthy)%' and l.job_id = 'rotate-' || :'rot'),
  1::bigint, 'the rollback is audited with the version and the job id');
set local role cortex_orchestrator;
select is(public.deployment_secrets__list(:'dep_a2') #>> '{0,version}', '1', 'the deployment''s bindings say which version it runs');
select is(public.secret_rotations__finish(:'rot', 'worker', 'rotate-' || :'rot') ->> 'state', 'completed', 'then the rotation completes');
-- after the rotation: the rolled-back deployment reads its pinned version; the switched one cannot read the old
select is(public.deployment_secrets__read_versions(:'dep_a2', array[:'s_a']::uuid[], array[1], 'worker',
  p_intent_id => pg_temp.read_intent(:'dep_a2', array[:'s_a']::uuid[])) ->> 'status', 'ok', 'a pinned deployment reads its version');
select is(public.deployment_secrets__read_versions(:'dep_a1', array[:'s_a']::uuid[], array[1], 'attacker',
  p_intent_id => pg_temp.read_intent(:'dep_a1', array[:'s_a']::uuid[])) ->> 'status', 'denied',
  'a deployment that no longer runs a version cannot read it');
select is(public.deployment_secrets__set_version(:'dep_a1', :'s_a', 1, 'attacker') ->> 'status', 'denied',
  'nor be pinned back to it once the rotation is over');
select is(public.deployment_secrets__set_version(:'dep_b1', :'s_a', 2, 'attacker') ->> 'status', 'denied',
  'another org''s secret cannot be pinned');

-- ---- retirement ---------------------------------------------------------------------------------
select throws_ok(format('select public.secret_rotations__retire_old(%L)', :'rot'), '22023', null,
  'nothing is retired before the grace period ends');
reset role;
update public.secret_rotations set retire_after = now() - interval '1 second' where id = :'rot';
set local role cortex_orchestrator;
select is(public.secret_rotations__retire_old(:'rot', 'maintenance', 'maintenance-x') -> 'kept',
  jsonb_build_array(jsonb_build_object('version', 1, 'deployments', 1)),
  'a version a rolled-back deployment still uses is kept');
select throws_ok(format('select public.secret_versions__retire(%L, 1)', :'s_a'), '22023', null,
  'and cannot be retired by hand either while bound');
select is(public.deployment_secrets__set_version(:'dep_a2', :'s_a', null, 'ops') ->> 'status', 'ok',
  'the deployment is moved to the current version');
select is(public.secret_rotations__retire_old(:'rot', 'maintenance', 'maintenance-y') -> 'retired', '[1]'::jsonb,
  'then the old version is retired');
reset role;
select is((select count(*) from vault.secrets v join public.secret_versions sv on sv.vault_secret_id = v.id
           where sv.secret_id = :'s_a' and sv.version = 1), 0::bigint, 'its vault secret is gone');
select is((select count(*) from pg_temp.new_log('delete', 'success') l
           where l.secret_id = :'s_a' and l.version = 1 and l.job_id = 'maintenance-y'), 1::bigint, 'audited delete with the job id');
select is((select old_retired_at is not null from public.secret_rotations where id = :'rot'), true, 'the rotation records it');

-- ---- leak report, policy, revoke -----------------------------------------------------------------
set local role cortex_orchestrator;
select ok((select count(*) from jsonb_array_elements(public.secret_access_log__reads_of_version(:'s_a', 1)) e
           where e ->> 'deployment_id' = :'dep_a2' and e ->> 'outcome' = 'success') >= 1,
  'every read of a version is listed (which deployment, when, which job)');
select is(public.secrets__set_max_age(:'s_a', 3600, 'ops') ->> 'max_age_seconds', '3600', 'a max age is set');
reset role;
update public.secret_versions set created_at = now() - interval '2 hours' where secret_id = :'s_a' and version = 2;
set local role cortex_orchestrator;
select is((select count(*) from jsonb_array_elements(public.secrets__list_overdue(:'org_a')) e where e ->> 'secret_id' = :'s_a'),
  1::bigint, 'a key older than its max age is listed');
select public.secrets__request_revoke(:'s_a', :'dep_a1', null, 'ops') ->> 'revocation_id' as rev_a1 \gset
select is(public.deployment_secrets__revoke(:'s_a', :'rev_a1', :'dep_a1', 'ops', 'revoke-x') ->> 'bindings_removed', '1',
  'revoke from one deployment removes its binding');
reset role;
select is((select count(*) from public.deployment_secrets where secret_id = :'s_a'), 2::bigint, 'and only its binding');
select is((select count(*) from pg_temp.new_log('revoke', 'success') l where l.deployment_id = :'dep_a1' and l.job_id = 'revoke-x'),
  1::bigint, 'audited with the job id');
select is((select count(*) from pg_temp.new_log('policy', 'success') l where l.secret_id = :'s_a'), 1::bigint,
  'the policy change is audited');

-- ---- no plaintext ----------------------------------------------------------------------------------
select is((select count(*) from public.secret_access_log l where l::text like '%canary-rotation%'), 0::bigint,
  'no audit row holds a value');
select is((select count(*) from public.secret_rotations r where r::text like '%canary-rotation%')
        + (select count(*) from public.secret_rotation_deployments r where r::text like '%canary-rotation%'), 0::bigint,
  'no rotation row holds a value');
select ok(public.secret_rotations__get(:'rot')::text not like '%canary%', 'nor does the rotation''s status');
select is((select public.secret_access_log__verify(:'org_a') ->> 'ok')::boolean, true, 'the org''s chain verifies');

select * from finish();
rollback;
