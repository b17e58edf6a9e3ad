-- deployment_steps__reopen (20261203100000_reopen_steps.sql, issue 11): a provision that failed
-- past its `secrets` step gets the named steps of its current run (the caller's: `secrets` and every
-- later one) set back to `pending`, so that its retry runs them again (reads the bound secrets at
-- their effective version, rewrites the env file, restarts the agent), whatever their recorded
-- start times; other steps and other runs are kept; a deployment that is not a failed provision
-- (requested, provisioning, ready, rotating, deprovisioning) is refused naming the field, with
-- nothing changed; bad input names the field; only the orchestrator's role may call it;
-- search_path pinned.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(18);

-- ---- privileges -------------------------------------------------------------------------------
select ok(has_function_privilege('cortex_orchestrator', 'public.deployment_steps__reopen(uuid, text[])', 'execute'),
  'cortex_orchestrator may reopen steps');
select ok(not has_function_privilege('anon', 'public.deployment_steps__reopen(uuid, text[])', 'execute')
  and not has_function_privilege('authenticated', 'public.deployment_steps__reopen(uuid, text[])', 'execute')
  and not has_function_privilege('service_role', 'public.deployment_steps__reopen(uuid, text[])', 'execute'),
  'no API role may');
select is((select p.prosecdef and coalesce(p.proconfig, '{}') @> array['search_path=pg_catalog, pg_temp']
  from pg_proc p where p.oid = 'public.deployment_steps__reopen(uuid, text[])'::regprocedure), true,
  'security definer with search_path = pg_catalog, pg_temp');

-- ---- fixtures: a provision failed at `health`, run 1 -------------------------------------------
select public.organizations__create('Reopen Org') ->> 'id' as org \gset
select public.deployments__request(:'org', 'Agent R', 'ro-' || substr(md5(random()::text), 1, 8), 'local', null, null, 'echo',
  '[]'::jsonb) #>> '{deployment,id}' as dep \gset
select public.deployments__request(:'org', 'Agent S', 'rs-' || substr(md5(random()::text), 1, 8), 'local', null, null, 'echo',
  '[]'::jsonb) #>> '{deployment,id}' as dep_running \gset

create function pg_temp.step(p_dep uuid, p_step text, p_status text, p_final boolean default false) returns void
language plpgsql as $$
begin
  perform public.deployment_steps__start(p_dep, 1, p_step);
  perform pg_catalog.pg_sleep(0.002); -- distinct start times, in order
  perform public.deployment_steps__finish(p_dep, 1, p_step, p_status,
    case when p_status = 'failed' then 'health_timeout' end, p_final);
end
$$;
grant execute on function pg_temp.step(uuid, text, text, boolean) to cortex_orchestrator;
set local role cortex_orchestrator;
select public.deployments__begin(:'dep', 'provision') ->> 'run' as run \gset
select pg_temp.step(:'dep', s, 'succeeded') from unnest(array['host', 'dns', 'ssh', 'configure', 'secrets', 'start']) s;
select pg_temp.step(:'dep', 'health', 'failed', true);
select public.deployments__begin(:'dep_running', 'provision') is not null as x \gset
select pg_temp.step(:'dep_running', s, 'succeeded') from unnest(array['host', 'secrets']) s;
reset role;
select is((select status from public.deployments where id = :'dep'), 'failed', 'set-up: the provision failed at health');

-- ---- refusals: nothing changes ------------------------------------------------------------------
\set later '{secrets,start,health,ready}'
set local role cortex_orchestrator;
select throws_ok(format($$select public.deployment_steps__reopen(%L, %L)$$, :'dep_running', :'later'), '22023',
  format('deployment_id: deployment %s is provisioning; only a failed provision can be reopened', :'dep_running'),
  'a provision still running is refused naming the field (its worker owns its steps)');
select throws_ok(format($$select public.deployment_steps__reopen(%L, '{secrets,"Start; drop"}')$$, :'dep'), '22023',
  'step: must be a step name like host or secrets', 'a malformed step name is refused naming the field');
select throws_ok(format($$select public.deployment_steps__reopen(%L, '{}')$$, :'dep'), '22023',
  'steps: must name 1 to 32 steps', 'no step is refused naming the field');
select throws_ok(format($$select public.deployment_steps__reopen(null, %L)$$, :'later'), '22023',
  'deployment_id: required', 'no deployment is refused naming the field');
reset role;
select is((select array_agg(status order by started_at) from public.deployment_steps where deployment_id = :'dep_running'),
  array['succeeded', 'succeeded'], 'the refused call changed nothing');
-- every other status is refused too (set as the superuser, around the status machine)
create function pg_temp.refused_as(p_status text, p_operation text) returns text language plpgsql as $$
declare v_msg text; v_id uuid := (select id from pg_temp.fixture);
begin
  set local session_replication_role = replica;
  update public.deployments set status = p_status, current_operation = p_operation where id = v_id;
  set local session_replication_role = origin;
  begin
    set local role cortex_orchestrator;
    perform public.deployment_steps__reopen(v_id, array['secrets']);
    v_msg := 'not refused';
  exception when invalid_parameter_value then
    v_msg := 'refused';
  end;
  reset role;
  return v_msg;
end
$$;
create temp table fixture as select :'dep_running'::uuid as id;
select is(array_agg(pg_temp.refused_as(st, op)), array['refused', 'refused', 'refused', 'refused', 'refused', 'refused'],
  'requested, ready, rotating, deprovisioning, and a failed deprovision or a deleted one: refused')
  from (values ('requested', 'provision'), ('ready', 'provision'), ('rotating', 'provision'),
               ('deprovisioning', 'deprovision'), ('failed', 'deprovision'), ('deleted', 'deprovision')) v(st, op);

-- ---- reopen secrets and every later step ---------------------------------------------------------
-- a clock stepped back: `start` recorded as starting before `secrets` (the order must not matter)
update public.deployment_steps set started_at = (select started_at from public.deployment_steps
  where deployment_id = :'dep' and step = 'secrets') - interval '1 hour'
  where deployment_id = :'dep' and step = 'start';
set local role cortex_orchestrator;
select is(public.deployment_steps__reopen(:'dep', :'later'), 3, 'secrets, start and health of run 1 are reopened: 3 rows (ready never ran)');
reset role;
select is((select array_agg(step || '=' || status order by step) from public.deployment_steps where deployment_id = :'dep' and run = 1),
  array['configure=succeeded', 'dns=succeeded', 'health=pending', 'host=succeeded', 'secrets=pending', 'ssh=succeeded', 'start=pending'],
  'the steps before secrets are kept done; secrets and every later step are pending again, whatever their start times');
select is((select count(*)::integer from public.deployment_steps where deployment_id = :'dep' and status = 'pending'
  and (finished_at is not null or error is not null or duration_ms is not null)), 0,
  'a reopened step has no end, error or duration left');
select is((select status from public.deployments where id = :'dep'), 'failed', 'the deployment stays failed (its retry resumes it)');

-- another run's records are not this run's: a record of run 2 stays as it is
insert into public.deployment_steps (deployment_id, run, step, status, started_at, operation, attempt)
  values (:'dep', 2, 'start', 'succeeded', now() - interval '2 hours', 'provision', 1);
set local role cortex_orchestrator;
select is(public.deployment_steps__reopen(:'dep', :'later'), 0, 'reopening again changes nothing (idempotent)');
reset role;
select is((select status from public.deployment_steps where deployment_id = :'dep' and run = 2 and step = 'start'),
  'succeeded', 'a step of another run is not touched');
set local role cortex_orchestrator;
-- the retry: the runner starts at the first step not done
select is(public.deployments__begin(:'dep', 'provision') ->> 'run', '1', 'the retry resumes run 1');
select lives_ok(format($$select public.deployment_steps__start(%L, 1, 'secrets')$$, :'dep'),
  'and the secrets step starts again in it');
reset role;

select * from finish();
rollback;
