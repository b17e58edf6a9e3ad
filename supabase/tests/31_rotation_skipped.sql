-- Review R7 (issue 11), findings 2 and 6: a rotation's `skipped` (migration
-- 20261204090000_rotation_skipped.sql). Written by the reviewer against the code before the fix,
-- where the findings' tests failed.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(10);
\ir support/read_intent.psql
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

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

-- R7 FINDING 2: secret_rotation_deployments__set_state (20261201120000_rotation.sql:326) accepts
-- pending -> `skipped` for a deployment that is `ready` (running its agent on the old version).
-- `skipped` is meant for a deployment that runs no agent (docs/rotation.md) and leaves the binding
-- following the current version, so the version the agent runs counts as unused: the rotation
-- finishes and secret_rotations__retire_old deletes it from the vault under a running agent
-- (nothing the job does today, but nothing in the contract stops the orchestrator's role either,
-- while `switching` is refused unless the deployment is ready).
-- a fresh secret bound to dep2, rotated as a leak (no grace period)
select public.secrets__create(:'org', 'openai', 'openai', 'canary-r7-s3-v1-' || md5(random()::text), pg_temp.fp('s3')) ->> 'secret_id' as s3 \gset
select public.deployment_secrets__bind(:'dep2', 'OPENAI_API_KEY', :'s3') is not null as b \gset
set local role cortex_orchestrator;
select gen_random_uuid() as rot3 \gset
select public.secret_rotations__start(:'rot3', :'s3', 'canary-r7-s3-v2-' || md5(random()::text), pg_temp.fp('s3b'), 0, true) is not null as x \gset
reset role;
select is((select status from public.deployments where id = :'dep2'), 'ready', 'set-up: the deployment runs its agent (ready)');
set local role cortex_orchestrator;
select throws_ok(format($$select public.secret_rotation_deployments__set_state(%L, %L, 'skipped', 'r7')$$, :'rot3', :'dep2'),
  '22023', null, 'R7 FINDING 2: a ready deployment (running the old version) cannot be recorded skipped');
reset role;

-- R7 FINDING 6: `skipped` leaves a pin in place (20261201120000_rotation.sql:347-356: only
-- `switched`, `rolled_back` and `failed` move the binding). A failed provision past `secrets`
-- whose host could not be reached on rotation R1's last attempt is recorded `failed` and PINNED
-- to the old version v1 (rotation-job.ts:299-304 at HEAD f1ad0d6; documented). The next rotation R2 (the one that
-- "tries again", here a leak response) reaches the host: scrubs it, reopens its steps from
-- `secrets` and records it `skipped` (rotation-job.ts:224-235), which docs/rotation.md says
-- follows the current version. The pin stays: the reopened retry's `secrets` step reads v1 and
-- writes it back onto the scrubbed host, and v1 is never retired (kept as "in use" by R1 and R2).
select public.deployments__create(:'org', 'R7 F6', 'r7f6-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep6 \gset
select 'canary-r7-s6-v1-' || md5(random()::text) as s6_v1 \gset
select public.secrets__create(:'org', 'anthropic-6', 'anthropic', :'s6_v1', pg_temp.fp(:'s6_v1')) ->> 'secret_id' as s6 \gset
select public.deployment_secrets__bind(:'dep6', 'ANTHROPIC_API_KEY', :'s6') is not null as b \gset
update public.deployments set status = 'provisioning' where id = :'dep6';
update public.deployments set status = 'failed' where id = :'dep6';
set local role cortex_orchestrator;
select gen_random_uuid() as r1 \gset
select public.secret_rotations__start(:'r1', :'s6', 'canary-r7-s6-v2-' || md5(random()::text), pg_temp.fp('s6v2'), 0) is not null as x \gset
-- R1's last attempt: host unreachable -> failed, pinned to v1 (as the job records it)
select public.secret_rotation_deployments__set_state(:'r1', :'dep6', 'failed', 'remote_command_failed') is not null as x \gset
select public.secret_rotations__finish(:'r1') is not null as x \gset
-- R2, a leak response: host reached, scrubbed, steps reopened -> skipped (as the job records it)
select gen_random_uuid() as r2 \gset
select public.secret_rotations__start(:'r2', :'s6', 'canary-r7-s6-v3-' || md5(random()::text), pg_temp.fp('s6v3'), 0, true) is not null as x \gset
select public.secret_rotation_deployments__set_state(:'r2', :'dep6', 'skipped', 'deployment_failed_reopened') is not null as x \gset
select public.secret_rotations__finish(:'r2') is not null as x \gset
select public.secret_rotations__retire_old(:'r2') as retired6 \gset
reset role;
select is((select version from public.deployment_secrets where deployment_id = :'dep6'), null::integer,
  'R7 FINDING 6: a deployment recorded skipped follows the current version (its earlier pin dropped)');
-- its retry (status provisioning again) reads what its `secrets` step will write
update public.deployments set status = 'provisioning' where id = :'dep6';
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep6', null, 'r7', 'r7-f6',
  p_intent_id => pg_temp.read_intent(:'dep6', null)) as r_f6 \gset
reset role;
select is(((:'r_f6'::jsonb) #>> '{secrets,0,version}')::integer, 3,
  'R7 FINDING 6: the reopened retry writes the current version (3), not v1 back onto the scrubbed host');
select ok((:'r_f6'::jsonb)::text not like '%' || :'s6_v1' || '%', 'R7 FINDING 6: v1''s value is not read again');
select is((select retired_at is not null from public.secret_versions where secret_id = :'s6' and version = 1), true,
  'R7 FINDING 6: v1 is retired once nothing runs it (the leak response''s retirement)');

-- The pin's drop is audited as a bind, naming the rotation and following the current version.
select ok(exists(select 1 from public.secret_access_log l where l.secret_id = :'s6' and l.operation = 'bind'
    and l.deployment_id = :'dep6' and l.reason like '%rotation ' || :'r2' || ': skipped (deployment_failed_reopened)%'
    and l.reason like '%follows the current version%'),
  'the dropped pin is audited (bind, rotation id, reason)');
-- A deployment that runs no agent (provisioning before its secrets step) may still be skipped.
select public.deployments__create(:'org', 'R7 F2b', 'r7f2b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep7 \gset
select public.secrets__create(:'org', 'anthropic-7', 'anthropic', 'canary-r7-s7-' || md5(random()::text), pg_temp.fp('s7')) ->> 'secret_id' as s7 \gset
select public.deployment_secrets__bind(:'dep7', 'ANTHROPIC_API_KEY', :'s7') is not null as b \gset
update public.deployments set status = 'provisioning' where id = :'dep7';
set local role cortex_orchestrator;
select gen_random_uuid() as r7 \gset
select public.secret_rotations__start(:'r7', :'s7', 'canary-r7-s7b-' || md5(random()::text), pg_temp.fp('s7b'), 0) is not null as x \gset
select lives_ok(format($$select public.secret_rotation_deployments__set_state(%L, %L, 'skipped', 'deployment_provisioning')$$, :'r7', :'dep7'),
  'a deployment provisioning (no agent yet) is still recorded skipped');
reset role;
select is((select state from public.secret_rotation_deployments where rotation_id = :'r7' and deployment_id = :'dep7'),
  'skipped', 'and its record says so');
-- the refusal changed nothing: dep2 is still pending in its rotation and ready
select is((select state from public.secret_rotation_deployments where rotation_id = :'rot3' and deployment_id = :'dep2'),
  'pending', 'the refused skip left the record pending');

select * from finish();
rollback;
