-- Review of the pipeline (issue 9): Postgres, not Redis, holds the intent to remove a deployment.
-- deployments__begin('deprovision') used to move any live deployment to deprovisioning, so whoever
-- could put `deprovision {deploymentId}` in Redis (ids are all a job holds, and they sit in Redis in
-- clear text) could have a worker destroy any deployment's server, DNS record and vault secrets. A
-- deprovision now starts only from deployments__request_deprovision (what `destroy` calls before
-- it enqueues, and what the reconciler's `deprovisioning` rows come from); a stray job stops.
-- `create or replace` keeps the function's grants (cortex_orchestrator only).

create or replace function public.deployments__begin(p_deployment_id uuid, p_operation text)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
  v_action text := 'run';
begin
  if p_operation is null or p_operation not in ('provision', 'deprovision') then
    raise exception using errcode = '22023', message = 'operation: must be provision or deprovision';
  end if;
  v := public.deployments__lock(p_deployment_id);
  if p_operation = 'provision' then
    if v.status = 'ready' then
      v_action := 'done';
      -- a worker that died after `ready` took effect and before recording it: the record catches up
      update public.deployment_steps s set status = 'succeeded', finished_at = pg_catalog.clock_timestamp(),
        duration_ms = greatest(0, (extract(epoch from pg_catalog.clock_timestamp() - s.started_at) * 1000)::integer)
       where s.deployment_id = v.id and s.run = v.current_run and s.step = 'ready' and s.status = 'running';
    elsif v.status in ('deprovisioning', 'deleted', 'rotating') then
      v_action := 'stop';
    elsif v.status = 'requested' then
      update public.deployments d set status = 'provisioning', current_operation = 'provision',
        current_run = d.current_run + 1, failed_step = null, failure_reason = null, progress_at = pg_catalog.now()
      where d.id = v.id returning * into v;
    elsif v.status = 'failed' then
      update public.deployments d set status = 'provisioning', current_operation = 'provision',
        failed_step = null, failure_reason = null, progress_at = pg_catalog.now()
      where d.id = v.id returning * into v;
    else -- provisioning: resume
      update public.deployments d set progress_at = pg_catalog.now() where d.id = v.id returning * into v;
    end if;
  else
    if v.status = 'deleted' then
      v_action := 'done';
    elsif v.status = 'deprovisioning' and v.current_operation = 'deprovision' then
      update public.deployments d set progress_at = pg_catalog.now() where d.id = v.id returning * into v;
    else
      -- Only deployments__request_deprovision starts a deprovision: a deprovision job for a
      -- deployment nobody asked to remove (it reached Redis some other way) stops here.
      v_action := 'stop';
    end if;
  end if;
  return pg_catalog.jsonb_build_object('action', v_action, 'run', v.current_run,
    'deployment', public.deployments__json(v.id));
end
$$;
