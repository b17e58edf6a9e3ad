-- The provisioning read honours version pins (20261202110000_rotation_pins.sql, issue 11): a
-- deployment rolled back by a rotation (its binding pinned to the old version) that is
-- re-provisioned reads the version it is pinned to, not the current one, audited with that
-- version; an unpinned binding still reads the current version; the vault-name scheme check holds
-- for a pinned version too (a repointed reference reads as missing, no value); the function keeps
-- its privileges and its pinned search_path.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(18);
\ir support/read_intent.psql
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

-- canary values generated at run time
select 'canary-pins-old-' || md5(random()::text) as v_old \gset
select 'canary-pins-new-' || md5(random()::text) as v_new \gset
select 'canary-pins-other-' || md5(random()::text) as v_other \gset

select public.organizations__create('Pins Org A') ->> 'id' as org_a \gset
select public.organizations__create('Pins Org B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'P1', 'pins-p1-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_pinned \gset
select public.deployments__create(:'org_a', 'P2', 'pins-p2-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep_follow \gset
select public.secrets__create(:'org_a', 'anthropic', 'anthropic', :'v_old', pg_temp.fp(:'v_old')) ->> 'secret_id' as s_a \gset
select public.secrets__create(:'org_a', 'openai', 'openai', :'v_other', pg_temp.fp(:'v_other')) ->> 'secret_id' as s_o \gset
select public.secrets__create(:'org_b', 'anthropic', 'anthropic', 'canary-pins-org-b-' || md5(random()::text), repeat('cd', 32)) ->> 'secret_id' as s_b \gset
select public.deployment_secrets__bind(:'dep_pinned', 'ANTHROPIC_API_KEY', :'s_a') is not null as b \gset
select public.deployment_secrets__bind(:'dep_pinned', 'OPENAI_API_KEY', :'s_o') is not null as b \gset
select public.deployment_secrets__bind(:'dep_follow', 'ANTHROPIC_API_KEY', :'s_a') is not null as b \gset
update public.deployments set status = 'provisioning' where id in (:'dep_pinned', :'dep_follow');
update public.deployments set status = 'ready' where id in (:'dep_pinned', :'dep_follow');
select gen_random_uuid() as rot \gset

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
create function pg_temp.new_log(p_operation text, p_outcome text)
returns setof public.secret_access_log language sql as $$
  select * from public.secret_access_log l
  where l.id > (select id from log_mark) and l.operation = p_operation and l.outcome = p_outcome order by l.id
$$;

-- a rotation: dep_follow switches, dep_pinned fails its health check and is rolled back (pinned to 1)
set local role cortex_orchestrator;
select public.secret_rotations__start(:'rot', :'s_a', :'v_new', pg_temp.fp(:'v_new'), 3600, false,
  'pgtap', 'rotate-' || :'rot') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_follow', 'switching', null, null, 'worker', 'rotate-' || :'rot') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_follow', 'switched', null, 'blue-green', 'worker', 'rotate-' || :'rot') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_pinned', 'switching', null, null, 'worker', 'rotate-' || :'rot') is not null as x \gset
select public.secret_rotation_deployments__set_state(:'rot', :'dep_pinned', 'rolled_back', 'unhealthy', 'blue-green', 'worker', 'rotate-' || :'rot') is not null as x \gset
select public.secret_rotations__finish(:'rot', 'worker', 'rotate-' || :'rot') is not null as x \gset
reset role;
select is((select version from public.deployment_secrets where deployment_id = :'dep_pinned' and secret_id = :'s_a'), 1,
  'set-up: the rolled-back deployment is pinned to version 1 while version 2 is current');

-- ---- the provisioning read of everything bound, as a re-provision's secrets step makes it -------
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_pinned', null, 'worker', 'provision-' || :'dep_pinned',
  p_intent_id => pg_temp.read_intent(:'dep_pinned', null)) as r_all \gset
reset role;
select is((:'r_all'::jsonb) ->> 'status', 'ok', 'the re-provisioned pinned deployment reads its environment');
select is((select e ->> 'value' from jsonb_array_elements((:'r_all'::jsonb) -> 'secrets') e where e ->> 'env_var' = 'ANTHROPIC_API_KEY'),
  :'v_old', 'a binding pinned to version 1 reads version 1''s value, not the current version''s');
select is((select (e ->> 'version')::integer from jsonb_array_elements((:'r_all'::jsonb) -> 'secrets') e where e ->> 'env_var' = 'ANTHROPIC_API_KEY'),
  1, 'and reports version 1');
select is((select e ->> 'value' from jsonb_array_elements((:'r_all'::jsonb) -> 'secrets') e where e ->> 'env_var' = 'OPENAI_API_KEY'),
  :'v_other', 'an unpinned binding of the same deployment reads its secret''s current version');
select ok((:'r_all'::jsonb)::text not like '%' || :'v_new' || '%', 'the current (new) value is nowhere in the pinned deployment''s read');
select is((select array_agg(l.version order by l.version) from pg_temp.new_log('read', 'success') l
           where l.deployment_id = :'dep_pinned' and l.secret_id = :'s_a' and l.job_id = 'provision-' || :'dep_pinned'),
  array[1], 'the audit row of the pinned read names version 1 and the job');

-- ---- the same read naming the secret ----------------------------------------------------------
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_pinned', array[:'s_a']::uuid[], 'worker', 'provision-named',
  p_intent_id => pg_temp.read_intent(:'dep_pinned', array[:'s_a']::uuid[])) as r_one \gset
reset role;
select is((:'r_one'::jsonb) #>> '{secrets,0,value}', :'v_old', 'a read naming the pinned secret reads the pinned version too');

-- ---- an unpinned deployment still follows the current version --------------------------------
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_follow', null, 'worker', 'provision-' || :'dep_follow',
  p_intent_id => pg_temp.read_intent(:'dep_follow', null)) as r_follow \gset
reset role;
select is((:'r_follow'::jsonb) #>> '{secrets,0,value}', :'v_new', 'the switched (unpinned) deployment reads the current version');
select is(((:'r_follow'::jsonb) #>> '{secrets,0,version}')::integer, 2, 'and reports version 2');

-- ---- moved back by hand to follow the current version: reads the new one ---------------------
set local role cortex_orchestrator;
select public.deployment_secrets__set_version(:'dep_pinned', :'s_a', null, 'ops') ->> 'status' as moved \gset
select public.deployment_secrets__read(:'dep_pinned', array[:'s_a']::uuid[], 'worker', 'provision-unpinned',
  p_intent_id => pg_temp.read_intent(:'dep_pinned', array[:'s_a']::uuid[])) as r_unpinned \gset
reset role;
select is((:'r_unpinned'::jsonb) #>> '{secrets,0,value}', :'v_new', 'once un-pinned, the same deployment reads the current version');

-- ---- the vault-name scheme holds for a pinned version -----------------------------------------
-- pin again (to version 1, which a running rotation would allow: set directly as the owner here),
-- then repoint version 1's reference at another org's vault row
update public.deployment_secrets set version = 1 where deployment_id = :'dep_pinned' and secret_id = :'s_a';
select vault_secret_id as vault_b from public.secret_versions where secret_id = :'s_b' and version = 1 \gset
update public.secret_versions set vault_secret_id = gen_random_uuid() where secret_id = :'s_b';
update public.secret_versions set vault_secret_id = :'vault_b' where secret_id = :'s_a' and version = 1;
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep_pinned', null, 'worker', 'provision-repointed',
  p_intent_id => pg_temp.read_intent(:'dep_pinned', null)) as r_bad \gset
reset role;
select is((:'r_bad'::jsonb) ->> 'status', 'error', 'a pinned version whose vault row carries another name reads as missing');
select ok((:'r_bad'::jsonb)::text not like '%canary%', 'and returns no value at all');
select is((select count(*) from pg_temp.new_log('read', 'error') l
           where l.deployment_id = :'dep_pinned' and l.secret_id = :'s_a' and l.version = 1 and l.job_id = 'provision-repointed'),
  1::bigint, 'the error is audited naming the pinned version');

-- ---- privileges and definer rules -------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid)', 'execute'),
  r || ' may not call the provisioning read') from unnest(array['anon', 'authenticated', 'service_role']) r;
select ok(has_function_privilege('cortex_orchestrator', 'public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid)', 'execute')
  and (select p.prosecdef and p.proconfig = array['search_path=pg_catalog, pg_temp'] from pg_proc p
       where p.oid = 'public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid)'::regprocedure),
  'the orchestrator may; it is security definer with search_path = pg_catalog, pg_temp');

select * from finish();
rollback;
