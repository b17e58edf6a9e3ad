-- Metrics read at scrape time (issue 10): the API process answers Prometheus with figures taken
-- from the source of truth rather than from any one process's memory, so a deployment moved by any
-- worker on any machine is counted once. Counts only: no id, no name, no value leaves this function.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create function public.metrics__deployments_by_status()
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(pg_catalog.jsonb_object_agg(c.status, c.n), '{}'::jsonb)
  from (select d.status, pg_catalog.count(*) as n from public.deployments d group by d.status) c
$$;

revoke all on function public.metrics__deployments_by_status() from public, anon, authenticated, service_role;
grant execute on function public.metrics__deployments_by_status() to cortex_orchestrator;
