-- Review R17 finding 1 (issue 11): deployment_secrets__list listed a deployment whose row in a
-- running rotation is `switching` at the row's from_version (to_version in a leak response). A
-- deployment provisioned AFTER the rotation started runs the new version from its first start
-- (its `secrets` step read to_version); its row becomes `switching` as soon as the rotation job
-- takes it up, and while it stays so (the job's attempt failed before or during its swap, and is
-- retried) a rebuild of its environment (a revoke of another secret, another secret's rotation)
-- wrote the old version onto a host that never had it, and the rotate job's retry, seeing a
-- resumed row, swapped it back to the old version (review R16 finding 2's outcome, still reachable
-- that way). Now the provision-read rule of `pending` rows (a successful audited `read` of
-- to_version made while one of the deployment's provision steps ran) holds for `switching` rows
-- too: such a deployment is listed at to_version, and the rotate job (rotation-job.ts) does not
-- swap back a deployment so listed. Any other `switching` row: from_version, or to_version in a
-- leak response, as before.
--
-- The read must also fall in the deployment's `secrets` step, the only provision step that reads
-- (review R18 finding 1): any provision step counted before, and a later step's row can stay
-- `running` with no finished_at on a ready deployment (a worker that died between setting `ready`
-- and recording the step), so the rotate job's own read of to_version for a switching row (every
-- attempt makes one) would have listed a deployment provisioned before the rotation at the new
-- version. The `secrets` step cannot stay open on a ready deployment: the runner runs it again
-- before any later step.
--
-- Same function as 20261205090000_bindings_running_version.sql with only those two changes (the
-- `when` and the step): same signature, security definer, search_path, grants (re-stated below).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A deployment's bindings with the version each one runs (no values): what its full environment is.
create or replace function public.deployment_secrets__list(p_deployment_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'env_var', b.env_var, 'secret_id', b.secret_id,
      'version', coalesce(mid.runs, b.version, s.current_version),
      'follows', coalesce(b.version, s.current_version),
      'pinned', b.version is not null, 'status', s.status) order by b.env_var)
    from public.deployment_secrets b
    join public.secrets s on s.id = b.secret_id
    -- at most one running rotation per secret (secret_rotations_one_running), one row per deployment
    left join lateral (
      select case
        when rd.state in ('pending', 'switching') and exists (
          select 1 from public.secret_access_log l
          join public.deployment_steps st on st.deployment_id = l.deployment_id
          where l.deployment_id = rd.deployment_id and l.secret_id = r.secret_id
            and l.operation = 'read' and l.outcome = 'success' and l.version = r.to_version
            -- made during one of its provision steps (its `secrets` step), not by a later reader
            and st.operation = 'provision' and st.step = 'secrets' and st.started_at <= l.at
            and l.at <= coalesce(st.finished_at, 'infinity'::timestamptz))
          then r.to_version
        when rd.state = 'switching' and r.leaked then r.to_version
        else rd.from_version
      end as runs
      from public.secret_rotation_deployments rd
      join public.secret_rotations r on r.id = rd.rotation_id
      where rd.deployment_id = b.deployment_id and r.secret_id = b.secret_id and r.state = 'running'
        and rd.state in ('pending', 'switching')
    ) mid on true
    where b.deployment_id = p_deployment_id), '[]'::jsonb);
end
$$;
revoke all on function public.deployment_secrets__list(uuid) from public, anon, authenticated, service_role;
grant execute on function public.deployment_secrets__list(uuid) to cortex_orchestrator;
