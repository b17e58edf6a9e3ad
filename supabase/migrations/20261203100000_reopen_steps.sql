-- Issue 11, open point: a deployment whose provision FAILED past its `secrets` step keeps the env
-- file that step wrote, and its retry resumes at the step that failed (deployments__begin), so
-- `secrets` is not run again. A rotation therefore had to pin such a deployment to the old version
-- (the one its host holds): that version could not be retired, and the old value stayed in the
-- vault and on that host until the next rotation. Here a failed provision's steps can be reopened:
-- the named steps of its current run are set back to `pending` (their attempts and start times
-- kept), so the retry runs them again: the `secrets` step reads each binding at its effective
-- version and rewrites the env file, `start` restarts the agent on it. The caller names the steps
-- (the pipeline's order is the orchestrator's: PROVISION_STEPS from `secrets` on), so nothing here
-- depends on the order of recorded start times. The rotation and revoke jobs reopen them, take
-- the old value off the host, and then record the deployment `skipped` (following the current
-- version) or remove the binding.
--
-- Same rules as the pipeline's other functions (20261130120000_pipeline.sql): security definer,
-- `search_path = pg_catalog, pg_temp`, fully qualified names, the deployment's row lock
-- (deployments__lock) around its step records, `<field>: <what is wrong>` errors (22023), EXECUTE
-- for cortex_orchestrator only. Only a deployment that is `failed` in a provision is accepted: a
-- running operation's steps are its worker's (a reopened step under it would run twice).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create function public.deployment_steps__reopen(p_deployment_id uuid, p_steps text[])
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
  v_step text;
  v_n integer;
begin
  if p_deployment_id is null then
    raise exception using errcode = '22023', message = 'deployment_id: required';
  end if;
  if p_steps is null or pg_catalog.cardinality(p_steps) = 0 or pg_catalog.cardinality(p_steps) > 32 then
    raise exception using errcode = '22023', message = 'steps: must name 1 to 32 steps';
  end if;
  foreach v_step in array p_steps loop
    perform public.deployment_steps__check_step(v_step);
  end loop;
  v := public.deployments__lock(p_deployment_id);
  if v.status is distinct from 'failed' or v.current_operation is distinct from 'provision' then
    raise exception using errcode = '22023',
      message = pg_catalog.format('deployment_id: deployment %s is %s; only a failed provision can be reopened',
        p_deployment_id, v.status);
  end if;
  update public.deployment_steps s
     set status = 'pending', finished_at = null, duration_ms = null, error = null
   where s.deployment_id = v.id and s.run = v.current_run and s.step = any (p_steps)
     and s.status is distinct from 'pending';
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.deployment_steps__reopen(uuid, text[]) from public, anon, authenticated, service_role;
grant execute on function public.deployment_steps__reopen(uuid, text[]) to cortex_orchestrator;
