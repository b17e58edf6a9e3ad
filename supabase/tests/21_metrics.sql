-- metrics__deployments_by_status (migration *_metrics.sql): counts by status, nothing else; only the
-- orchestrator's role may call it.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(5);

select ok(has_function_privilege('cortex_orchestrator', 'public.metrics__deployments_by_status()', 'execute'),
  'cortex_orchestrator may read the counts');
select ok(not has_function_privilege('anon', 'public.metrics__deployments_by_status()', 'execute')
  and not has_function_privilege('authenticated', 'public.metrics__deployments_by_status()', 'execute')
  and not has_function_privilege('service_role', 'public.metrics__deployments_by_status()', 'execute'),
  'no API role may call it');

create temp table before_counts as select public.metrics__deployments_by_status() as c;
select public.organizations__create('metrics-org') ->> 'id' as org_id \gset
select (public.deployments__create(:'org_id', 'm1', 'metrics-t1', 'local')->>'id') as d1 \gset
select (public.deployments__create(:'org_id', 'm2', 'metrics-t2', 'local')->>'id') as d2 \gset
select (public.deployments__create(:'org_id', 'm3', 'metrics-t3', 'local')->>'id') as d3 \gset
update public.deployments set status = 'provisioning' where id = :'d3';

select is(
  (public.metrics__deployments_by_status()->>'requested')::int
    - coalesce(((select c from before_counts)->>'requested')::int, 0),
  2, 'two more requested');
select is(
  (public.metrics__deployments_by_status()->>'provisioning')::int
    - coalesce(((select c from before_counts)->>'provisioning')::int, 0),
  1, 'one more provisioning');
select ok(
  (select bool_and(k in ('requested', 'provisioning', 'ready', 'failed', 'rotating', 'deprovisioning', 'deleted')
                   and jsonb_typeof(v) = 'number')
   from jsonb_each(public.metrics__deployments_by_status()) as e(k, v)),
  'keys are statuses and values are counts: nothing else');

select * from finish();
rollback;
