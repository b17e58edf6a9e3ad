-- deployments__json as PL/pgSQL (20261202123000_deployments_json_plpgsql.sql, issue 10's benchmark):
-- its plan is kept for the session, and nothing else changed: the same result as the query it
-- runs (a deployment with several steps over two runs and addresses, one without steps, an unknown
-- id), the same security (definer, pinned search_path, no API role may execute it), and the read
-- through deployments__describe still answers the same, a second time in the session as well (the
-- cached plan), also after a step changed (the plan caches the query, never its result).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(12);

-- the query of 20261130120000_pipeline.sql, verbatim: the reference the function must agree with
create function pg_temp.reference(p_id uuid) returns jsonb language sql stable as $$
  select pg_catalog.to_jsonb(d) || pg_catalog.jsonb_build_object(
    'ipv4', pg_catalog.host(d.ipv4), 'ipv6', pg_catalog.host(d.ipv6),
    'steps', coalesce((
      select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'run', s.run, 'operation', s.operation, 'step', s.step, 'status', s.status, 'attempt', s.attempt,
        'started_at', s.started_at, 'finished_at', s.finished_at, 'duration_ms', s.duration_ms, 'error', s.error)
        order by s.run, s.started_at nulls last, s.step)
      from public.deployment_steps s where s.deployment_id = d.id), '[]'::jsonb))
  from public.deployments d where d.id = p_id
$$;

select is((select l.lanname::text from pg_proc p join pg_language l on l.oid = p.prolang
           where p.oid = 'public.deployments__json(uuid)'::regprocedure), 'plpgsql',
  'deployments__json is PL/pgSQL (its plan lives for the session)');
select ok((select p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp'] and p.provolatile = 's'
           from pg_proc p where p.oid = 'public.deployments__json(uuid)'::regprocedure),
  'still security definer, stable, with search_path pinned to pg_catalog, pg_temp');
select ok(not has_function_privilege('anon', 'public.deployments__json(uuid)', 'execute')
          and not has_function_privilege('authenticated', 'public.deployments__json(uuid)', 'execute')
          and not has_function_privilege('service_role', 'public.deployments__json(uuid)', 'execute')
          and not has_function_privilege('cortex_orchestrator', 'public.deployments__json(uuid)', 'execute'),
  'no API role, nor the orchestrator, may execute it directly (deployments__describe is the way in)');

select public.organizations__create('Json Plpgsql Org') ->> 'id' as org \gset
select public.deployments__create(:'org', 'J1', 'jpl-a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.deployments__create(:'org', 'J2', 'jpl-b-' || substr(md5(random()::text), 1, 6)) ->> 'id' as bare \gset
select public.deployments__begin(:'dep', 'provision', 'token-jpl-1') ->> 'run' as run \gset
select public.deployment_steps__start(:'dep', :run, 'host', 'token-jpl-1') is not null as x \gset
select public.deployment_steps__finish(:'dep', :run, 'host', 'succeeded', null, false, 'token-jpl-1') is not null as x \gset
select public.deployment_steps__start(:'dep', :run, 'ssh', 'token-jpl-1') is not null as x \gset
select public.deployments__record_host(:'dep', 'host-jpl', '198.51.100.7', '2001:db8::7', null, 'token-jpl-1') is not null as x \gset

select cmp_ok(jsonb_array_length(public.deployments__json(:'dep') -> 'steps'), '>=', 2,
  'the fixture has steps (the comparison below covers the aggregate)');
select is(public.deployments__json(:'dep'), pg_temp.reference(:'dep'), 'a deployment with steps: the same document as the query');
select is(public.deployments__json(:'dep'), pg_temp.reference(:'dep'), 'and again in the same session (cached plan)');
select is(public.deployments__json(:'bare'), pg_temp.reference(:'bare'), 'a deployment without steps: the same document');
select is(public.deployments__json(:'bare') -> 'steps', '[]'::jsonb, 'its steps are an empty array');
select is(public.deployments__json(gen_random_uuid()), null::jsonb, 'an unknown id: NULL, as before');

select public.deployment_steps__finish(:'dep', :run, 'ssh', 'failed', 'ssh_unreachable: timeout', true, 'token-jpl-1') is not null as x \gset
select is(public.deployments__json(:'dep'), pg_temp.reference(:'dep'), 'after a step changed: the new document, not a cached one');

select pg_temp.reference(:'dep') as ref \gset
set local role cortex_orchestrator;
select is(public.deployments__describe(:'dep'), :'ref'::jsonb, 'deployments__describe, as the orchestrator, answers the same');
select throws_ok(format($$select public.deployments__describe(%L)$$, gen_random_uuid()), 'P0002', null,
  'deployments__describe of an unknown id still raises not found');
reset role;

select * from finish();
rollback;
