-- Issue 11, open point: a deployment whose provision FAILED past its `secrets` step keeps the env
-- file that step wrote, and its retry resumes at the step that failed (deployments__begin), so
-- `secrets` is not run again. A rotation therefore had to pin such a deployment to the old version
-- (the one its host holds): that version could not be retired, and the old value stayed in the
-- vault and on that host until the next rotation. Here a failed provision's steps can be reopened
-- from a given step on: the step and every step of the current run that started at or after it are
-- set back to `pending` (their attempts and start times kept), so the retry runs them again: the
-- `secrets` step reads each binding at its effective version and rewrites the env file, `start`
-- restarts the agent on it. The rotation job reopens from `secrets`, after taking the old value
-- off the host, and then records the deployment `skipped` (following the current version).
--
-- Same rules as the pipeline's other functions (20261130120000_pipeline.sql): security definer,
-- `search_path = pg_catalog, pg_temp`, fully qualified names, the deployment's row lock
-- (deployments__lock) around its step records, `<field>: <what is wrong>` errors (22023), EXECUTE
-- for cortex_orchestrator only. Only a deployment that is `failed` in a provision is accepted: a
-- running operation's steps are its worker's (a reopened step under it would run twice).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create function public.deployment_steps__reopen(p_deployment_id uuid, p_step text)
returns integer
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.deployments%rowtype;
  v_from timestamptz;
  v_n integer;
begin
  perform public.deployment_steps__check_step(p_step);
  if p_deployment_id is null then
    raise exception using errcode = '22023', message = 'deployment_id: required';
  end if;
  v := public.deployments__lock(p_deployment_id);
  if v.status is distinct from 'failed' or v.current_operation is distinct from 'provision' then
    raise exception using errcode = '22023',
      message = pg_catalog.format('deployment_id: deployment %s is %s; only a failed provision can be reopened',
        p_deployment_id, v.status);
  end if;
  select s.started_at into v_from
    from public.deployment_steps s
   where s.deployment_id = v.id and s.run = v.current_run and s.step = p_step;
  if not found then
    return 0; -- the run never reached that step: its retry runs it anyway
  end if;
  update public.deployment_steps s
     set status = 'pending', finished_at = null, duration_ms = null, error = null
   where s.deployment_id = v.id and s.run = v.current_run
     and (s.step = p_step or (v_from is not null and s.started_at >= v_from))
     and s.status is distinct from 'pending';
  get diagnostics v_n = row_count;
  return v_n;
end
$$;
revoke all on function public.deployment_steps__reopen(uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.deployment_steps__reopen(uuid, text) to cortex_orchestrator;
